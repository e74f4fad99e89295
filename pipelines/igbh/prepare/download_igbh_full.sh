#!/usr/bin/env bash
# Download IGBH-Full (~2.2 TB) into ${DATA_DIR}/full/processed, as the reference's download_igbh_full.sh lays it
# out, then write the seed-42 split and the CSC graph cache (and, with FP16=1, the fp16 feature copies):
#   DATA_DIR=/data/igbh pipelines/igbh/prepare/download_igbh_full.sh
# SKIP_DOWNLOAD=1 only runs the preparation steps over files already there.
set -euo pipefail

: "${DATA_DIR:?set DATA_DIR to the dataset folder (it gets full/processed/)}"
: "${IGBH_URL:=https://igb-public.s3.us-east-2.amazonaws.com/IGBH/processed}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
OUT="${DATA_DIR}/full/processed"

FILES=(
    paper/node_feat.npy paper/node_label_19.npy paper/node_label_2K.npy paper/paper_id_index_mapping.npy
    paper__cites__paper/edge_index.npy
    author/author_id_index_mapping.npy author/node_feat.npy
    conference/conference_id_index_mapping.npy conference/node_feat.npy
    institute/institute_id_index_mapping.npy institute/node_feat.npy
    journal/journal_id_index_mapping.npy journal/node_feat.npy
    fos/fos_id_index_mapping.npy fos/node_feat.npy
    author__affiliated_to__institute/edge_index.npy paper__published__journal/edge_index.npy
    paper__topic__fos/edge_index.npy paper__venue__conference/edge_index.npy paper__written_by__author/edge_index.npy
)

if [[ "${SKIP_DOWNLOAD:-0}" != 1 ]]; then
    for f in "${FILES[@]}"; do
        mkdir -p "${OUT}/$(dirname "$f")"
        # -c resumes a partial file; the readers refuse a table whose size is not the declared one
        wget -c -q --show-progress -O "${OUT}/$f" "${IGBH_URL}/$f"
    done
fi

cd "${REPO_ROOT}"
"${PYTHON:-python}" -m pipelines.igbh.prepare.split_seeds --root "${DATA_DIR}"
"${PYTHON:-python}" -m pipelines.igbh.prepare.compress_graph --root "${DATA_DIR}"
if [[ "${FP16:-0}" == 1 ]]; then
    "${PYTHON:-python}" -m pipelines.igbh.prepare.convert_fp16 --root "${DATA_DIR}"
fi
