"""Test-only s3-init (compose.override.yaml): the three buckets on moto_server, from the same
environment as deploy/compose/s3-init.sh (moto keeps no users: any key is accepted)."""

from __future__ import annotations

import os

import boto3

s3 = boto3.client(
    "s3",
    endpoint_url="http://s3:7070",
    region_name="us-east-1",
    aws_access_key_id=os.environ["S3_ROOT_USER"],
    aws_secret_access_key=os.environ["S3_ROOT_PASSWORD"],
)
have = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
for var in ("LAKE_BUCKET", "IMAGES_BUCKET", "MLFLOW_BUCKET"):
    if os.environ[var] not in have:
        s3.create_bucket(Bucket=os.environ[var])
print(
    "s3-init (moto):",
    sorted(os.environ[v] for v in ("LAKE_BUCKET", "IMAGES_BUCKET", "MLFLOW_BUCKET")),
)
