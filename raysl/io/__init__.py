"""Files on a local disk or object storage (s3://, gs://, ...), the bottom of the house with raysl.errors:
every stage reads and writes through raysl.io.storage. Imports raysl.errors only.
"""
