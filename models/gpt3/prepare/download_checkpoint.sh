#!/usr/bin/env bash
# Download and unpack the MLPerf GPT-3 initial checkpoint (4000 steps at GBS 1536, with Adam moments),
# then write its common.pt and verify it.
#
#   AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... models/gpt3/prepare/download_checkpoint.sh OUT_DIR [fp32|bf16]
#
# The checkpoint lives in the MLCommons training working group's S3 bucket (read-only credentials, bucket
# and endpoint: "S3 artifacts download" in mlcommons/training large_language_model/megatron-lm/README.md):
#   fp32: gpt3/megatron-lm/checkpoint_megatron_fp32.tar   unpacks to ckpt4000_fp32/
#   bf16: gpt3/megatron-lm/checkpoint_nemo_bf16.tar       unpacks to ckpt4000-consumed_samples=0/
# Either is a Megatron zarr distributed checkpoint: one directory per tensor (weights,
# optimizer.state.exp_avg.*, optimizer.state.exp_avg_sq.*, and for bf16 optimizer.state.fp32_from_fp16.*).
# Needs the aws CLI and several TB of space. Point LOAD_CHECKPOINTS_PATH at the unpacked directory.
set -euo pipefail

OUT="${1:?usage: download_checkpoint.sh OUT_DIR [fp32|bf16]}"
KIND="${2:-fp32}"
: "${AWS_ACCESS_KEY_ID:?set the bucket's read-only AWS_ACCESS_KEY_ID (see the header of this script)}"
: "${AWS_SECRET_ACCESS_KEY:?set the bucket's read-only AWS_SECRET_ACCESS_KEY}"
ENDPOINT="${S3_ENDPOINT:-https://s3.us-east-1.lyvecloud.seagate.com}"
BUCKET="${S3_BUCKET:-mlcommons-training-wg-s3}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
PYTHON="${PYTHON:-python}"

case "$KIND" in
    fp32) object=gpt3/megatron-lm/checkpoint_megatron_fp32.tar; unpacked=ckpt4000_fp32 ;;
    bf16) object=gpt3/megatron-lm/checkpoint_nemo_bf16.tar; unpacked="ckpt4000-consumed_samples=0" ;;
    *) echo "download_checkpoint.sh: kind must be fp32 or bf16, not '$KIND'" >&2; exit 2 ;;
esac
command -v aws >/dev/null || { echo "download_checkpoint.sh: needs the aws CLI (pip install awscli)" >&2; exit 1; }

mkdir -p "$OUT"
aws s3 cp --endpoint-url "$ENDPOINT" "s3://$BUCKET/$object" - | tar -x -C "$OUT"
ckpt="$OUT/$unpacked"
# The step counters the reference's common_<kind>.json holds: global step and Adam step 4000.
cat > "$OUT/common_$KIND.json" <<JSON
{"global_step": 4000, "epoch": 0,
 "optimizer_states": [{"optimizer": {"param_groups": [{"lr": 2e-05, "betas": [0.9, 0.95], "eps": 1e-08,
                                                        "weight_decay": 0.1, "step": 4000}]}}]}
JSON
cd "$REPO"
"$PYTHON" -m models.gpt3.prepare.common_json_to_pt "$OUT/common_$KIND.json" "$ckpt"
"$PYTHON" -m models.gpt3.prepare.verify_checkpoint "$ckpt"
echo "LOAD_CHECKPOINTS_PATH=$ckpt"
