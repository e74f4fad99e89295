#!/usr/bin/env bash
# Prepare KiTS19 for the 3D U-Net benchmark, as the reference's README does (image_segmentation/pytorch):
#   1. clone neheller/kits19 into ${RAW_DIR} and download the imaging with its starter code
#      (`python -m starter_code.get_imaging`: ~30 GB of imaging.nii.gz; segmentation.nii.gz is in the clone),
#      unless ${RAW_DIR}/kits19/data already holds the cases (skip with SKIP_DOWNLOAD=1);
#   2. preprocess cases 00000-00209 into the flat directory ${DATA_DIR} (resample to 1.6 x 1.2 x 1.2 mm, clip,
#      normalise, pad to 128; pipelines/kits19/prepare/preprocess.py) with ${WORKERS} processes;
#   3. check every output file's md5 against the reference's checksum.json (420 files).
# The split (168 train / 42 eval) is made at load time from pipelines/kits19/evaluation_cases.txt.
#
#   RAW_DIR=/scratch/kits19_raw DATA_DIR=/data/kits19 pipelines/kits19/prepare/download_dataset.sh
set -euo pipefail

: "${RAW_DIR:?set RAW_DIR to a scratch folder for the KiTS19 clone and its NIfTI volumes}"
: "${DATA_DIR:?set DATA_DIR to the output folder for the preprocessed .npy files}"
: "${WORKERS:=$(nproc)}"
: "${KITS19_REPO:=https://github.com/neheller/kits19}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"

if [[ "${SKIP_DOWNLOAD:-0}" != 1 ]]; then
    mkdir -p "${RAW_DIR}"
    [[ -d "${RAW_DIR}/kits19/.git" ]] || git clone "${KITS19_REPO}" "${RAW_DIR}/kits19"
    # the starter code's own requirements, in its own environment: they are not this repository's pins
    ( cd "${RAW_DIR}/kits19" && "${KITS19_PYTHON:-python3}" -m starter_code.get_imaging )
fi

cd "${REPO_ROOT}"
"${PYTHON:-python}" -m pipelines.kits19.prepare.preprocess --data-dir "${RAW_DIR}/kits19/data" \
    --results-dir "${DATA_DIR}" --workers "${WORKERS}"
