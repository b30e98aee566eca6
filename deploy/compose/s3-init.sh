#!/bin/sh
# S3 one-shot (versitygw image): the pipeline's own access key (role `user`: no admin API, no
# bucket creation) and the three buckets, owned by that key. Idempotent: safe on every `up`.
set -eu
vgw() {
  /app/versitygw admin --access "$S3_ROOT_USER" --secret "$S3_ROOT_PASSWORD" \
    --endpoint-url http://s3:7070 "$@"
}
if ! vgw list-users | grep -q -- "$PIPELINE_ACCESS_KEY"; then
  vgw create-user --access "$PIPELINE_ACCESS_KEY" --secret "$PIPELINE_SECRET_KEY" --role user
fi
buckets=$(vgw list-buckets)
for bucket in "$LAKE_BUCKET" "$IMAGES_BUCKET" "$MLFLOW_BUCKET"; do
  if ! echo "$buckets" | grep -q -- "$bucket"; then
    vgw create-bucket --owner "$PIPELINE_ACCESS_KEY" --bucket "$bucket"
  fi
done
echo "s3-init: buckets $LAKE_BUCKET $IMAGES_BUCKET $MLFLOW_BUCKET owned by $PIPELINE_ACCESS_KEY"
