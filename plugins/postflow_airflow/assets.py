"""Assets postflow publishes; one name each, shared by producer and consumer DAGs."""

from airflow.sdk import Asset

from ml.lake.schema import DATASET_CLEAN

POSTS_CLEAN = Asset(name=DATASET_CLEAN, uri=f"postflow://lake/{DATASET_CLEAN}", group="postflow")
