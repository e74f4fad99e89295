#!/bin/bash
# The Llama-2-70B base model (HF layout) and its fused-qkv rewrite, the benchmark's data.init_checkpoint.
#   models/llama2_70b_lora/prepare/download_model.sh /data/llama2-70b
# Needs network, `huggingface-cli` and a HF token that has accepted Meta's Llama 2 license (HF_TOKEN).
# Writes /data/llama2-70b/hf (as published, ~130 GB bf16) and /data/llama2-70b/fused (LOAD_CHECKPOINTS_PATH).
set -euo pipefail
out="${1:?usage: download_model.sh OUT_DIR}"
huggingface-cli download meta-llama/Llama-2-70b-hf --local-dir "$out/hf" \
    --include "*.safetensors" "model.safetensors.index.json" "config.json" "tokenizer*" "generation_config.json"
python -m models.llama2_70b_lora.prepare.fuse_qkv --src "$out/hf" --out "$out/fused"
echo "LOAD_CHECKPOINTS_PATH=$out/fused"
