"""Stage 3, what a run reads from a prepared dataset: its pretraining plan (subsets, pools, corruptions, planned
once), the data conditions and corruptions as pure functions, the evaluation images (bank and queries, read
on demand) and the label sets they are scored against. Imports raysl.config, raysl.ingest and raysl.views.
"""
