#!/bin/bash
# The MLCommons-tokenised SCROLLS GovReport (Llama-2 tokenizer, 8192-token rows) from the HF hub, then a check.
#   pipelines/govreport/prepare/download_dataset.sh /data/govreport
# Needs network and `huggingface-cli` (huggingface_hub). Writes train-00000-of-00001.parquet (3901 rows) and
# validation-00000-of-00001.parquet (173 rows) into the directory, as the benchmark's data.format=parquet reads.
set -euo pipefail
out="${1:?usage: download_dataset.sh OUT_DIR}"
mkdir -p "$out"
repo=regisss/scrolls_gov_report_preprocessed_mlperf_2
for f in train-00000-of-00001.parquet validation-00000-of-00001.parquet; do
    huggingface-cli download --repo-type dataset "$repo" "data/$f" --local-dir "$out/.hf"
    mv "$out/.hf/data/$f" "$out/$f"
done
rm -rf "$out/.hf"
python -m pipelines.govreport.prepare.verify_dataset "$out"
