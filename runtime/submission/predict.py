"""Time to train before a cluster is spent: samples to converge from the RCPs, divided by a throughput, plus the
evaluations the schedule implies and the timed start-up.

    minutes = startup + samples / throughput + evals(samples) x eval_seconds

samples: the RCP mean at the global batch (rcp.py, the RCP checker's own choice and interpolation). A run that
converges faster than the RCP mean has its score multiplied by RCP mean / its mean (scaling.json), so the score
sits at the mean's time or above it: the band runs from the mean to the mean plus the reference runs' stdev over
the olympic mean of N runs (stdev / sqrt(N - 2)). throughput: training samples per second of the whole system,
from a short run's metrics.jsonl (its first window, warm-up and compilation, left out), a number, or the GPT-3
planner's step time. evals: the benchmark's eval cadence (EVAL_RULES, from the spec files) up to the samples.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from dataclasses import dataclass

from runtime.submission.rcp import SAMPLES_PER_UNIT, UNIT_NAME, convergence
from runtime.submission.runs import required_runs


def _bert_interval(gbs: int) -> float:
    return math.floor(0.05 * (230.23 * gbs + 3e6) / 25_000) * 25_000


def evals_before(benchmark: str, samples: float, gbs: int) -> int:
    """How many evaluations the benchmark's rule cadence (shared/spec/README.md) runs up to `samples`."""
    epoch = SAMPLES_PER_UNIT.get(benchmark, 1)
    if benchmark == "resnet":
        return math.ceil(samples / epoch / 4)
    if benchmark == "ssd":
        return math.ceil(samples / epoch)
    if benchmark == "unet3d":  # from epoch 1000 of 168 samples, then every 20 epochs
        return 0 if samples < 168_000 else 1 + math.ceil((samples - 168_000) / 3_360)
    if benchmark == "stable_diffusion":
        return math.ceil(samples / 512_000)
    if benchmark == "bert":
        return math.ceil(samples / _bert_interval(gbs))
    if benchmark == "gpt3":
        return math.ceil(samples / 24_576)
    if benchmark == "llama2_70b_lora":  # every 384 sequences, the first floor(0.125 GBS + 2) skipped
        first = (math.floor(0.125 * gbs + 2) + 1) * 384
        return 0 if samples < first else 1 + math.ceil((samples - first) / 384)
    if benchmark in ("dlrm_dcnv2", "gnn"):
        return math.ceil(samples / (epoch / 20))
    raise ValueError(f"{benchmark}: no eval cadence known")


# Stable Diffusion's evaluation is offline (NVIDIA: checkpoints scored after training, run_stop at the passing
# checkpoint's time): it is not in the timed score.
UNTIMED_EVALS = {"stable_diffusion"}


@dataclass
class Measured:
    """What a short run of the real flavour says: system throughput (samples/s), seconds per evaluation, the
    timed start-up (run_start to the first block), and the untimed init (init_start to init_stop)."""

    benchmark: str
    global_batch_size: int
    throughput: float
    eval_seconds: float | None
    startup_seconds: float
    init_seconds: float
    source: str


def _log_events(path: str) -> list[dict]:
    with open(path, encoding="latin-1") as f:
        return [json.loads(line.split(":::MLLOG ", 1)[1]) for line in f if ":::MLLOG " in line]


def measure_run(run_dir: str) -> Measured:
    log_path, metrics_path = os.path.join(run_dir, "mlperf_log.txt"), os.path.join(run_dir, "metrics.jsonl")
    for path in (log_path, metrics_path):
        if not os.path.isfile(path):
            raise ValueError(f"{path}: missing (a run directory of runtime.train)")
    events = _log_events(log_path)
    first = {}
    for e in events:
        first.setdefault(e["key"], e)
    for key in ("submission_benchmark", "global_batch_size", "run_start", "init_start", "init_stop"):
        if key not in first:
            raise ValueError(f"{log_path}: no `{key}` line")
    gbs = int(first["global_batch_size"]["value"])
    windows, previous = [], 0
    with open(metrics_path) as f:
        for number, line in enumerate(f, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(f"{metrics_path}:{number}: not JSON") from None
            if "samples_per_s" in record:
                windows.append((record["step"] - previous, record["samples_per_s"]))
                previous = record["step"]
    timed = windows[1:]  # the first window holds the warm-up: compilation, first batches, cache fills
    if not timed or sum(steps for steps, _ in timed) == 0:
        raise ValueError(f"{metrics_path}: fewer than two progress windows; run more steps "
                         f"(run.max_steps) or log more often (run.log_every_steps)")
    samples = sum(steps * gbs for steps, _ in timed)
    seconds = sum(steps * gbs / rate for steps, rate in timed)
    starts = [e["time_ms"] for e in events if e["key"] == "eval_start"]
    stops = [e["time_ms"] for e in events if e["key"] == "eval_stop"]
    evals = [(b - a) / 1000 for a, b in zip(starts, stops)]
    blocks = [e["time_ms"] for e in events if e["key"] == "block_start"]
    startup = ((blocks[0] - first["run_start"]["time_ms"]) / 1000) if blocks else 0.0
    return Measured(first["submission_benchmark"]["value"], gbs, samples / seconds,
                    statistics.median(evals) if evals else None, startup,
                    (first["init_stop"]["time_ms"] - first["init_start"]["time_ms"]) / 1000,
                    f"{run_dir} ({len(timed)} windows, {sum(s for s, _ in timed)} steps after the first window)")


def read_plan(text: str, per_gpu_tokens: float | None = None) -> tuple[int, int, float]:
    """(world size, global batch in sequences, sequences/s) from models.gpt3.plan's output. Its step time gives
    the rate, unless a measured tokens/s per GPU is given."""
    world = re.search(r"^\S+ on (\d+) GPUs:", text, re.M)
    tokens = re.search(r"^model FLOPs per step \S+ \((\d+) tokens\)", text, re.M)
    if not world or not tokens:
        raise ValueError("planner output: no '<flavour> on <N> GPUs:' or 'model FLOPs per step ... (<T> tokens)' "
                         "line (the output of python -m models.gpt3.plan)")
    world_size, tokens_per_step = int(world.group(1)), int(tokens.group(1))
    gbs = tokens_per_step // 2048
    if per_gpu_tokens:
        return world_size, gbs, per_gpu_tokens * world_size / 2048
    step = re.search(r"^\w+: ([\d.]+) s/step", text, re.M)
    if not step:
        raise ValueError("planner output has no step time: run it with --step-time, or give --per-gpu-rate")
    return world_size, gbs, gbs / float(step.group(1))


@dataclass
class Prediction:
    benchmark: str
    global_batch_size: int
    how: str
    samples: float
    samples_high: float
    throughput: float
    train_seconds: float
    evals: int
    eval_seconds_total: float
    startup_seconds: float
    minutes: float
    minutes_high: float
    notes: list

    @property
    def dominant(self) -> str:
        terms = {"steps": self.train_seconds, "evals": self.eval_seconds_total, "start-up": self.startup_seconds}
        return max(terms, key=terms.get)


def predict(benchmark: str, gbs: int, throughput: float, eval_seconds: float | None = None,
            startup_seconds: float = 0.0) -> Prediction:
    if throughput <= 0:
        raise ValueError(f"throughput {throughput}: must be > 0 samples/s")
    point = convergence(benchmark, gbs)
    counted = required_runs(benchmark) - 2 * (4 if benchmark == "unet3d" else 1)
    samples = point.mean_samples
    high = samples + point.stdev_samples / math.sqrt(max(counted, 1))
    notes = []
    evals = evals_before(benchmark, samples, gbs)
    if eval_seconds is None:
        notes.append("eval cost not measured: counted as 0")
        eval_seconds = 0.0
    if benchmark in UNTIMED_EVALS:
        notes.append("evaluation offline, not in the timed score")
        eval_seconds = 0.0

    def minutes(s: float) -> float:
        return (startup_seconds + s / throughput + evals_before(benchmark, s, gbs) * eval_seconds) / 60

    return Prediction(benchmark, gbs, point.how, samples, high, throughput, samples / throughput, evals,
                      evals * eval_seconds, startup_seconds, minutes(samples), minutes(high), notes)


def describe(p: Prediction) -> str:
    unit = SAMPLES_PER_UNIT[p.benchmark]
    lines = [f"{p.benchmark} at global batch {p.global_batch_size}: {p.how}, {p.samples / unit:.6g} "
             f"{UNIT_NAME[p.benchmark]} = "
             f"{p.samples:,.0f} samples to converge (score band up to {p.samples_high:,.0f})",
             f"  throughput {p.throughput:,.1f} samples/s -> steps {p.train_seconds / 60:.2f} min; {p.evals} evals "
             f"{p.eval_seconds_total / 60:.2f} min; timed start-up {p.startup_seconds / 60:.2f} min",
             f"  predicted {p.minutes:.2f} min (band {p.minutes:.2f} - {p.minutes_high:.2f}); dominated by "
             f"{p.dominant}" + (f"  [{'; '.join(p.notes)}]" if p.notes else "")]
    return "\n".join(lines)


# NVIDIA's published v4.0 closed results as facts (shared/spec/performance_anchors.md §1 and §3, the per-benchmark
# spec files): global batch, throughput per GPU in samples/s (GPT-3: tokens/s / 2048, including eval; Llama:
# 2.15 sequences/s per node), GPUs, published minutes.
NVIDIA_V40 = {
    "resnet": (3200, 7160.0, 8, 13.33),
    "ssd": (256, 290.0, 8, 35.48),
    "unet3d": (56, 72.3, 8, 12.14),
    "stable_diffusion": (512, 126.9, 8, 42.23),
    "bert": (768, 970.0, 8, 5.47),
    "llama2_70b_lora": (8, 2.15 / 8, 8, 28.16),
    "dlrm_dcnv2": (55296, 1.72e6, 8, 3.87),
    "gnn": (16384, 15.5e3, 8, 11.34),
    "gpt3": (2304, 770.0 / 2048, 512, 50.73),
}
# Facts the spec files do not hold, without which the prediction for that row misses: NVIDIA's eval seconds.
MISSING_FACTS = {"unet3d": "eval seconds per evaluation (about 57 evals of 42 full volumes before convergence)",
                 "llama2_70b_lora": "eval seconds per evaluation (173 sequences of 8192 tokens every 384 samples)"}


def nvidia_table() -> list[tuple[str, int, int, float, float, float, str]]:
    """(benchmark, GPUs, GBS, predicted, published, difference %, note) per NVIDIA v4.0 row, steps only: their
    eval seconds are not among the published facts."""
    rows = []
    for benchmark, (gbs, per_gpu, gpus, published) in NVIDIA_V40.items():
        p = predict(benchmark, gbs, per_gpu * gpus, eval_seconds=None)
        rows.append((benchmark, gpus, gbs, p.minutes, published, 100 * (p.minutes / published - 1),
                     MISSING_FACTS.get(benchmark, "")))
    return rows
