# BERT-large phase 2 on one DGX H100: 8 GPUs x 96 sequences (packed up to 2 per 512-token row, about
# NVIDIA's 48 rows) x 2 accumulation steps = GBS 1536, an RCP point (2.776M samples; lr 2e-3, 2254 steps,
# beta 0.66/0.996, no warmup); FP8 GEMMs through Transformer Engine where it imports.
#   source launchers/bert/config_DGXH100_01x08x96x2_pack.sh
#   CONT=<image> DATADIR=/lustre/bert LOGDIR=$PWD/results sbatch -N $DGXNNODES -t $WALLTIME launchers/bert.sub
# DATADIR: store/train, store/eval and phase1/model.ckpt-28252.npz (launchers/bert.sub). A checkpoint kept
# elsewhere: EXTRA_MOUNTS=/ckpt:/ckpt EXTRA_ARGS="data.init_checkpoint=/ckpt/model.ckpt-28252.npz".
# Every value is a default: set it in the environment before sourcing to change it.

## DL params: the typed recipe (models/bert/config.py), never a flag string
export BENCHMARK=${BENCHMARK:-bert}
export FLAVOUR=${FLAVOUR:-dgxh100_1x8}
export EXTRA_ARGS=${EXTRA_ARGS:-}          # dotted overrides for experiments, e.g. "model.fp8=false"

## System run params
export DGXNNODES=${DGXNNODES:-1}
# Minutes per run: NVIDIA's 8xH100 time is 5.5 min at GBS 768; GBS 1536 needs ~6% more samples, and this
# stack has not been timed on H100 yet. Plus up to 10 of untimed init (checkpoint load, warm-up) and slack.
export WALLTIME_RUNANDTIME=${WALLTIME_RUNANDTIME:-25}

# DGXSYSTEM from this file's name, the system block (launchers/systems/), NEXP and WALLTIME.
source "$(dirname "${BASH_SOURCE[0]}")/../config_common.sh"
