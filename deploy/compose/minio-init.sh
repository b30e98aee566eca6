#!/bin/sh
# MinIO one-shot (minio/mc image): the buckets, and a non-root access key for the pipeline
# that may read and write those buckets only. Idempotent: safe on every `docker compose up`.
set -eu
mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"
for bucket in "$LAKE_BUCKET" "$IMAGES_BUCKET" "$MLFLOW_BUCKET"; do
  mc mb --ignore-existing "local/$bucket"
done
cat > /tmp/postflow-policy.json <<JSON
{
  "Version": "2012-10-17",
  "Statement": [
    {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
     "Resource": ["arn:aws:s3:::$LAKE_BUCKET", "arn:aws:s3:::$IMAGES_BUCKET", "arn:aws:s3:::$MLFLOW_BUCKET"]},
    {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
     "Resource": ["arn:aws:s3:::$LAKE_BUCKET/*", "arn:aws:s3:::$IMAGES_BUCKET/*", "arn:aws:s3:::$MLFLOW_BUCKET/*"]}
  ]
}
JSON
mc admin policy create local postflow-rw /tmp/postflow-policy.json
mc admin user add local "$PIPELINE_ACCESS_KEY" "$PIPELINE_SECRET_KEY"
mc admin policy attach local postflow-rw --user "$PIPELINE_ACCESS_KEY" || true  # already attached
echo "minio-init: buckets $LAKE_BUCKET $IMAGES_BUCKET $MLFLOW_BUCKET, user $PIPELINE_ACCESS_KEY"
