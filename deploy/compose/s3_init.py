"""Compose one-shot (runs in postflow's `airflow` image): the three buckets, made over the S3
protocol with the pipeline's credentials, so it works the same against the bundled Versity
gateway (whose root account those credentials are: ROOT_ACCESS_KEY / ROOT_SECRET_KEY), any
other S3 server, and moto in `make stack-test`. Nothing inside the S3 server's image is used.

Environment: S3_ENDPOINT, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_DEFAULT_REGION,
S3_BUCKETS (space-separated), S3_WAIT_S (how long to wait for the endpoint to answer).
Idempotent: a bucket that exists and is ours is left as it is.
"""

from __future__ import annotations

import os
import sys
import time

import boto3
from botocore.exceptions import BotoCoreError, ClientError


def wait_for_s3(s3, timeout_s: float) -> set[str]:
    """The endpoint answers ListBuckets with our key (the gateway may still be starting)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        except (BotoCoreError, ClientError) as exc:
            if time.monotonic() > deadline:
                msg = f"s3-init: {os.environ['S3_ENDPOINT']} did not answer: {exc}"
                raise SystemExit(msg) from exc
            time.sleep(2)


def main() -> int:
    s3 = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT"])
    have = wait_for_s3(s3, float(os.environ.get("S3_WAIT_S", "120")))
    buckets = os.environ["S3_BUCKETS"].split()
    for bucket in buckets:
        if bucket in have:
            continue
        try:
            s3.create_bucket(Bucket=bucket)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
                raise
    # a bucket listed but not reachable with our key fails here and not in the pipeline
    for bucket in buckets:
        s3.head_bucket(Bucket=bucket)
    print(f"s3-init: buckets {' '.join(buckets)} at {os.environ['S3_ENDPOINT']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
