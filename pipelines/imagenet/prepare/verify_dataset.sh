#!/usr/bin/env bash
# Verify a converted ImageNet in the reference TFRecord layout: 1024 train / 128 validation shards,
# 1,281,167 / 50,000 records, both CRCs of every record, a JPEG and a label in 1..1000 in each.
# Reads the whole dataset (~150 GB): about 10 minutes with 16 workers on local NVMe.
#
#   pipelines/imagenet/prepare/verify_dataset.sh /data/imagenet [extra verify_dataset.py flags]
#   e.g. for the synthetic debug set:
#   pipelines/imagenet/prepare/verify_dataset.sh /data/syn --train-records 1536 --val-records 512 \
#       --train-shards 8 --val-shards 4 --num-classes 16
set -euo pipefail

if [[ $# -gt 0 && "$1" != -* ]]; then
    DATA_DIR="$1"
    shift
fi
: "${DATA_DIR:?usage: verify_dataset.sh DATA_DIR [flags] (or set DATA_DIR)}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
cd "${REPO_ROOT}"
exec "${PYTHON:-python}" -m pipelines.imagenet.prepare.verify_dataset --data-dir "${DATA_DIR}" \
    --workers "${WORKERS:-$(nproc)}" "$@"
