"""Compose one-shot (runs in the `ml` image): demo posts into MySQL when `posts` is empty, their
photos into the images bucket, then the pipeline's SELECT-only account.

Environment: POSTFLOW_MYSQL_URI (an account that may create the database and users),
POSTFLOW_IMAGE_ROOT / POSTFLOW_S3_ENDPOINT / AWS_* (photos), POSTFLOW_READER_USER and
POSTFLOW_READER_PASSWORD (the account Airflow reads with), DEMO_POSTS, DEMO_DAYS.
Idempotent: a second `docker compose up` seeds nothing and re-applies the account.
"""

from __future__ import annotations

import os
import sys

from ml.cli import main as ml_main
from ml.config import Settings
from ml.ingest.source import MySQLTarget, count_posts, create_reader_account, create_schema


def main() -> int:
    admin = MySQLTarget.parse(Settings.load().mysql_uri)
    create_schema(admin)
    rows = count_posts(admin)
    if rows == 0:
        posts, days = os.environ.get("DEMO_POSTS", "3000"), os.environ.get("DEMO_DAYS", "3")
        rc = ml_main(["demo-data", "--posts", posts, "--days", days])
        if rc:
            return rc
        rows = count_posts(admin)
    else:
        print(f"seed: posts already holds {rows} rows; no demo data generated")
    user = os.environ.get("POSTFLOW_READER_USER", "postflow_reader")
    # SELECT on posts and nothing else, from any host of the compose network.
    create_reader_account(admin, user, os.environ["POSTFLOW_READER_PASSWORD"], hosts=("%",))
    print(f"seed: {rows} posts; '{user}'@'%' may SELECT {admin.database}.posts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
