#!/usr/bin/env bash
# Criteo 1TB Click Logs -> the MLPerf DLRMv2 multi-hot dataset, the reference's four steps:
#   1. tsv_to_npy   TSV -> day_i_{dense,sparse,labels}.npy (dense = log(x + 3))
#   2. contiguous   categorical values -> first-appearance contiguous ids over all 24 days
#   3. shuffle      days 0..22 jointly (numpy legacy seed 0), day 23 untouched
#   4. multi_hot    one-hot ids -> day_i_sparse_multi_hot.npz (lookup tables, seed 0, uniform)
# then verifies the result. The raw logs (day_0 ... day_23, uncompressed, ~1.3 TB) must already be in
# RAW_DIR: Criteo hosts them behind a licence page, so there is no anonymous download to script.
# Space: ~1.3 TB raw + ~0.9 TB per intermediate step + ~4 TB output; step 1 runs WORKERS days in parallel
# (step 1 keeps one day in memory per worker, ~40 GB).
#
#   RAW_DIR=/data/criteo_raw TMP_DIR=/scratch/criteo_tmp DATA_DIR=/data/criteo_multihot \
#       pipelines/criteo/prepare/preprocess.sh
# For a different set of days or table sizes (e.g. the tiny fake TSVs in the tests): DAYS=3 TABLE_ROWS=5,7,...
# VERIFY_FLAGS="--train-samples -1 --eval-samples -1" (the split sizes checked by default are the real ones).
set -euo pipefail

: "${RAW_DIR:?set RAW_DIR to the folder holding day_0 ... day_23}"
: "${TMP_DIR:?set TMP_DIR to a scratch folder for the intermediate .npy files}"
: "${DATA_DIR:?set DATA_DIR to the output folder}"
: "${DAYS:=24}"
: "${WORKERS:=4}"
: "${PYTHON:=python}"
: "${TABLE_ROWS:=40000000,39060,17295,7424,20265,3,7122,1543,63,40000000,3067956,405282,10,2209,11938,155,4,976,14,40000000,40000000,40000000,590152,12973,108,36}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
cd "${REPO_ROOT}"
LAST=$((DAYS - 1))

"${PYTHON}" -m pipelines.criteo.prepare.tsv_to_npy --in-dir "${RAW_DIR}" --out-dir "${TMP_DIR}/step1" \
    --days "0-${LAST}" --workers "${WORKERS}"
"${PYTHON}" -m pipelines.criteo.prepare.contiguous --in-dir "${TMP_DIR}/step1" --out-dir "${TMP_DIR}/step2" \
    --days "0-${LAST}"
"${PYTHON}" -m pipelines.criteo.prepare.shuffle --dense-labels-dir "${TMP_DIR}/step1" \
    --sparse-dir "${TMP_DIR}/step2" --out-dir "${TMP_DIR}/step3" --days "${DAYS}" --seed 0
"${PYTHON}" -m pipelines.criteo.prepare.multi_hot --in-dir "${TMP_DIR}/step3" --out-dir "${DATA_DIR}" \
    --tables-dir "${TMP_DIR}/tables" --days "0-${LAST}" --table-rows "${TABLE_ROWS}"
"${PYTHON}" -m pipelines.criteo.prepare.verify_dataset --data-dir "${DATA_DIR}" --days "${DAYS}" \
    --table-rows "${TABLE_ROWS}" ${VERIFY_FLAGS:-}
