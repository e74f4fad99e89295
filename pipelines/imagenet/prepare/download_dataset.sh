#!/usr/bin/env bash
# Prepare ILSVRC-2012 (ImageNet-1k) for the ResNet-50 benchmark.
#
# ImageNet cannot be downloaded anonymously: register at https://image-net.org, accept the terms,
# and download these two files yourself into ${TAR_DIR}:
#   ILSVRC2012_img_train.tar  (~138 GB, md5 1d675b47d978889d74fa0da5fadfb00e)
#   ILSVRC2012_img_val.tar    (~6.3 GB, md5 29b22e2961454d5413ddabcf34fc5622)
# This script then
#   1. checks the md5 sums (skip with SKIP_MD5=1),
#   2. extracts them to ${RAW_DIR}/train/<synset>/*.JPEG and ${RAW_DIR}/val/*.JPEG,
#   3. fetches the validation labels (one synset per image, sorted filename order; public file
#      from tensorflow/models) unless ${RAW_DIR}/${VAL_LABELS_NAME} already exists,
#   4. converts to the reference TFRecord layout in ${DATA_DIR} (build_tfrecords.py; skip with
#      SKIP_CONVERT=1) and verifies it (verify_dataset.sh).
# Needs ~300 GB free for raw + converted data; the raw folders may be deleted afterwards.
#
#   TAR_DIR=/downloads RAW_DIR=/scratch/imagenet_raw DATA_DIR=/data/imagenet \
#       pipelines/imagenet/prepare/download_dataset.sh
set -euo pipefail

: "${TAR_DIR:?set TAR_DIR to the folder holding ILSVRC2012_img_{train,val}.tar}"
: "${RAW_DIR:?set RAW_DIR to a scratch folder for the extracted JPEGs}"
: "${DATA_DIR:?set DATA_DIR to the output folder for the TFRecord shards}"
: "${WORKERS:=$(nproc)}"
: "${VAL_LABELS_NAME:=imagenet_2012_validation_synset_labels.txt}"
: "${VAL_LABELS_URL:=https://raw.githubusercontent.com/tensorflow/models/master/research/slim/datasets/imagenet_2012_validation_synset_labels.txt}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"

TRAIN_TAR="${TAR_DIR}/ILSVRC2012_img_train.tar"
VAL_TAR="${TAR_DIR}/ILSVRC2012_img_val.tar"
for tar_file in "${TRAIN_TAR}" "${VAL_TAR}"; do
    [[ -f "${tar_file}" ]] || { echo "missing ${tar_file} (download it from image-net.org)" >&2; exit 1; }
done

if [[ "${SKIP_MD5:-0}" != 1 ]]; then
    echo "checking md5 sums (several minutes)"
    ( cd "${TAR_DIR}" && md5sum -c - ) <<SUMS
1d675b47d978889d74fa0da5fadfb00e  ILSVRC2012_img_train.tar
29b22e2961454d5413ddabcf34fc5622  ILSVRC2012_img_val.tar
SUMS
fi

mkdir -p "${RAW_DIR}/train" "${RAW_DIR}/val"
echo "extracting train: 1000 per-class tars inside one tar"
tar -xf "${TRAIN_TAR}" -C "${RAW_DIR}/train"
find "${RAW_DIR}/train" -maxdepth 1 -name 'n*.tar' -print0 |
    xargs -0 -P "${WORKERS}" -I{} sh -c 'dir="${1%.tar}"; mkdir -p "$dir" && tar -xf "$1" -C "$dir" && rm "$1"' _ {}
echo "extracting validation"
tar -xf "${VAL_TAR}" -C "${RAW_DIR}/val"

if [[ ! -f "${RAW_DIR}/${VAL_LABELS_NAME}" ]]; then
    curl -fsSL -o "${RAW_DIR}/${VAL_LABELS_NAME}" "${VAL_LABELS_URL}"
fi

if [[ "${SKIP_CONVERT:-0}" != 1 ]]; then
    cd "${REPO_ROOT}"
    "${PYTHON:-python}" -m pipelines.imagenet.prepare.build_tfrecords \
        --train-dir "${RAW_DIR}/train" --val-dir "${RAW_DIR}/val" \
        --val-labels "${RAW_DIR}/${VAL_LABELS_NAME}" --out "${DATA_DIR}" --workers "${WORKERS}"
    WORKERS="${WORKERS}" pipelines/imagenet/prepare/verify_dataset.sh "${DATA_DIR}"
fi
