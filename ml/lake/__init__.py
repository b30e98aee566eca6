"""The lake: Parquet partitions under one root (a folder or `s3://bucket/prefix`), each committed
whole by a manifest written last (`partitions`), and the names and schemas of every dataset in it
(`schema`). Every stage reads and writes through here."""
