"""Stage 1 of a datum's path, source files -> prepared shards: one reader per source (idx, cifar, folder listing
and folder pixels, parquet, webdataset), the writers (write: pixels; encoded: the files' bytes), `raysl prepare`
(prepare), the prepared dataset read back (dataset, shards), the first-use cache (cache) and where a run's data
is (resolve). Imports raysl.config, raysl.io and raysl.errors; nothing above.
"""
