"""Assets postflow publishes; one name each, shared by producer and consumer DAGs."""

from airflow.sdk import Asset

POSTS_CLEAN = Asset(name="posts_clean", uri="postflow://lake/posts_clean", group="postflow")
