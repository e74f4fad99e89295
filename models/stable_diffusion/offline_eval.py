"""Offline evaluation (NVIDIA's v4.0 Stable Diffusion): keep the UNet of every checkpoint while training to the
step cap, evaluate the checkpoints afterwards in order, and report as the rules ask.

Checkpoint directory (eval.checkpoints): per checkpoint `unet_<samples>.pt` (the UNet's state dict under
"unet", fp32, weights only) and, written after it, `unet_<samples>.json` {samples_count, step, time_ms,
timed_seconds, seed, run_id}: a checkpoint is complete once its .json exists, so an evaluator on other nodes can
follow a run that is still training. The directory belongs to one run: a run that does not resume refuses one that
already holds checkpoints, and a run's own evaluation reads only the entries of its run_id (kept in its resume
checkpoint) up to what it trained. `training_done.json` {run_id, samples_count} is written with the checkpoint at
the end of the budget: no more will come. `scores.json` holds the FID and CLIP found so far per checkpoint, with
the eval settings they were found under; the run's own offline phase and `evaluate_checkpoints` reuse each other's
and merge into it under a lock (`scores.json.lock`), so that neither loses the other's.

Reporting rule (spec: in 1 of 10 runs every checkpoint up to the first pass, in the others the first passing
one and the one before it): eval.offline_report "all" or "pair". The checker aggregates FID and CLIP per
samples_count and wants at least two such points: when the very first checkpoint passes, "pair" reports it
and the one after it.

Overlapped evaluation (train.eval_mode=overlapped) scores the same checkpoint files with the same code in rank 0's
background process while training continues: `start_scorer` builds that process's evaluation-only benchmark
(`evaluation_benchmark`, as the standalone evaluator does) and `score_checkpoint` evaluates one checkpoint there.
"""

from __future__ import annotations

import dataclasses
import fcntl
import glob
import json
import math
import os
from typing import Callable

import torch
import torch.distributed as dist
from mlperf_logging.mllog import constants

from runtime import checkpoint
from runtime.atomic_write import write_text_atomic
from runtime.benchmark import OfflineVerdict
from runtime.data_parallel import unwrap

DIR_NAME = "unet_checkpoints"
SCORES = "scores.json"
DONE = "training_done.json"
REPORT_RULES = ("pair", "all")
_META_KEYS = ("samples_count", "step", "time_ms", "timed_seconds", "seed", "run_id")


def checkpoint_stem(directory: str, samples: int) -> str:
    return os.path.join(directory, f"unet_{samples:012d}")


def write_checkpoint(directory: str, unet_state: dict, meta: dict) -> None:
    """The weights, then the metadata that marks them complete (both atomically)."""
    stem = checkpoint_stem(directory, meta["samples_count"])
    checkpoint.save_atomic({"unet": unet_state}, stem + ".pt")
    write_text_atomic(stem + ".json", json.dumps(meta) + "\n")


def write_training_done(directory: str, run_id: str, samples: int) -> None:
    """The marker that the run `run_id` kept its last checkpoint (`samples` trained): no more will come."""
    write_text_atomic(os.path.join(directory, DONE), json.dumps({"run_id": run_id, "samples_count": samples}) + "\n")


def training_done(directory: str, run_id: str) -> bool:
    """Whether the run `run_id` wrote its last checkpoint into `directory`."""
    path = os.path.join(directory, DONE)
    if not os.path.exists(path):
        return False
    try:
        with open(path) as f:
            return json.load(f).get("run_id") == run_id
    except (OSError, ValueError, AttributeError) as e:
        raise ValueError(f"{path}: not a training_done marker ({e})") from None


def holds_checkpoints(directory: str) -> bool:
    return bool(glob.glob(os.path.join(directory, "unet_*.json")))


def read_index(directory: str, run_id: str | None = None, max_samples: int | None = None) -> list[dict]:
    """The complete checkpoints of `directory`, oldest first: their metadata plus "path". With `run_id`: only that
    run's, up to `max_samples` trained; without: the whole directory, which must hold one run's."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory}: no checkpoint directory (eval.checkpoints)")
    entries = []
    for meta_path in sorted(glob.glob(os.path.join(directory, "unet_*.json"))):
        try:
            with open(meta_path) as f:
                meta = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"{meta_path}: not a checkpoint's metadata ({e})") from None
        missing = [k for k in _META_KEYS if k not in meta]
        if missing:
            raise ValueError(f"{meta_path}: missing key(s) {missing}")
        if run_id is not None and (meta["run_id"] != run_id or
                                   (max_samples is not None and meta["samples_count"] > max_samples)):
            continue  # another run's, or beyond what this run trained
        path = meta_path[:-len(".json")] + ".pt"
        if not os.path.exists(path):
            raise FileNotFoundError(f"{meta_path}: its weights {path} are missing")
        entries.append({**meta, "path": path})
    runs = sorted({(e["run_id"], e["seed"]) for e in entries})
    if len(runs) > 1:
        raise ValueError(f"{directory}: holds the checkpoints of {len(runs)} runs (run_id, seed: {runs}); "
                         f"evaluate one run's directory")
    entries.sort(key=lambda e: e["samples_count"])
    return entries


def load_unet(model: torch.nn.Module, path: str) -> None:
    state = checkpoint.load(path)
    if "unet" not in state:
        raise RuntimeError(f"checkpoint {path}: missing key 'unet' (has {sorted(state)})")
    try:
        unwrap(model).load_state_dict(state["unet"])
    except RuntimeError as e:
        raise RuntimeError(f"checkpoint {path}: does not fit this UNet ({str(e).splitlines()[0]})") from None


def reported(passed: list[bool], total: int, rule: str) -> list[int] | None:
    """Indices of the checkpoints to report, given the verdicts of the first len(passed) of `total` checkpoints
    (in order); None while more must be evaluated. With no pass among all of them: every one."""
    if rule not in REPORT_RULES:
        raise ValueError(f"eval.offline_report={rule!r}: expected one of {REPORT_RULES}")
    if True not in passed:
        return list(range(total)) if len(passed) == total else None
    first = passed.index(True)
    if rule == "all":
        return list(range(first + 1))
    if first > 0:
        return [first - 1, first]
    if total == 1:
        return [0]
    return [0, 1] if len(passed) >= 2 else None  # the checker needs two points: the one after the pass


class ScoreCache:
    """scores.json: {"settings": ..., "scores": {samples: {"FID", "CLIP", "time_ms"}}}, read and written by rank
    0. A score counts only under the same eval settings and for the same write of its checkpoint (time_ms). The
    run and an evaluator elsewhere may write it at the same time: each write re-reads the file and merges into it
    under an exclusive lock, then replaces it atomically."""

    def __init__(self, directory: str, settings: dict):
        self.path, self.settings = os.path.join(directory, SCORES), settings
        self.scores: dict[str, dict] = self._read()

    def _read(self) -> dict[str, dict]:
        if not os.path.exists(self.path):
            return {}
        try:
            with open(self.path) as f:
                saved = json.load(f)
        except (OSError, ValueError) as e:
            raise ValueError(f"{self.path}: not a scores file ({e}); remove it to evaluate afresh") from None
        return saved.get("scores", {}) if saved.get("settings") == self.settings else {}

    def get(self, entry: dict) -> tuple[float, float] | None:
        found = self.scores.get(str(entry["samples_count"]))
        if found is None or found.get("time_ms") != entry["time_ms"]:
            return None
        return found["FID"], found["CLIP"]

    def put(self, entry: dict, fid: float, clip: float) -> None:
        with open(self.path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            self.scores = {**self._read(), str(entry["samples_count"]): {"FID": fid, "CLIP": clip,
                                                                          "time_ms": entry["time_ms"]}}
            write_text_atomic(self.path, json.dumps({"settings": self.settings, "scores": self.scores}, indent=1)
                              + "\n")


def eval_settings(cfg) -> dict:
    """What a score depends on besides the weights (not the targets it is compared with)."""
    ignored = dict.fromkeys(("offline_report", "checkpoints", "fid_target", "clip_target"))
    settings = {"eval": dataclasses.asdict(cfg.eval) | ignored,
                "model": dataclasses.asdict(cfg.model), "eval_samples": cfg.data.eval_samples}
    return json.loads(json.dumps(settings))  # as scores.json gives it back (tuples as lists)


def score_checkpoints(bench, directory: str, rule: str, every: bool = False, *, run_id: str | None = None,
                      max_samples: int | None = None, preempted: Callable[[], bool] | None = None
                      ) -> tuple[list[dict], list[int] | None]:
    """Evaluate the checkpoints of `directory` (read_index's, of `run_id` up to `max_samples`) in order (every rank,
    collectively) until the reporting rule is decided (or all of them, with `every`); returns (entries with
    "FID"/"CLIP"/"passed" where evaluated, the indices to report). `preempted()` (every rank calls it together) is
    asked before each checkpoint still to evaluate: when it says so, the scores found so far are in scores.json
    and the indices are None."""
    cfg, ctx = bench.cfg, bench.ctx
    e = cfg.eval
    entries = read_index(directory, run_id, max_samples)
    if not entries:
        whose = f" of run {run_id}" if run_id is not None else ""
        raise FileNotFoundError(f"{directory}: holds no complete checkpoint{whose} (unet_*.json)")
    cache = ScoreCache(directory, eval_settings(cfg)) if ctx.is_main else None
    # Rank 0 decides which scores are known, so that every rank evaluates the same checkpoints (collectives).
    known = torch.full((len(entries), 2), math.nan, dtype=torch.float64, device=ctx.device)
    if cache is not None:
        for i, entry in enumerate(entries):
            if (found := cache.get(entry)) is not None:
                known[i] = torch.tensor(found, dtype=torch.float64)
    if ctx.launch.world_size > 1:
        dist.broadcast(known, src=0)
    passed, chosen = [], None
    for i, entry in enumerate(entries):
        fid, clip = (float(v) for v in known[i].tolist())
        if math.isnan(fid):
            if preempted is not None and preempted():
                return entries, None
            load_unet(bench.model, entry["path"])
            fid, clip = bench.fid_and_clip()
            if cache is not None:
                cache.put(entry, fid, clip)
        entry.update(FID=fid, CLIP=clip, passed=fid <= e.fid_target and clip >= e.clip_target)
        passed.append(entry["passed"])
        if ctx.is_main:
            print(f"checkpoint {os.path.basename(entry['path'])} ({entry['samples_count']} images): FID {fid:.4f} "
                  f"(target <= {e.fid_target}), CLIP {clip:.4f} (target >= {e.clip_target})", flush=True)
        chosen = reported(passed, len(entries), rule)
        if chosen is not None and not every:
            break
    return entries, chosen


def log_and_decide(bench, entries: list[dict], chosen: list[int]) -> OfflineVerdict:
    """Log the reported checkpoints' eval lines (checkpoint order) and the run_stop they decide."""
    from models.stable_diffusion.benchmark import pass_ratio

    log, e = bench.ctx.log, bench.cfg.eval
    evals = []
    for i in chosen:
        entry = entries[i]
        position = {"epoch_num": entry["samples_count"], "samples_count": entry["samples_count"]}
        log.start(constants.EVAL_START, metadata=position)
        for metric in ("FID", "CLIP"):
            log.event(constants.EVAL_ACCURACY, entry[metric], metadata={**position, "metric": metric})
        log.end(constants.EVAL_STOP, metadata=position)
        evals.append((entry["samples_count"], pass_ratio(entry["FID"], entry["CLIP"], e.fid_target, e.clip_target)))
    first = next((entry for entry in entries if entry.get("passed")), None)
    if first is None:
        return OfflineVerdict("aborted", f"none of the {len(entries)} checkpoints reaches FID <= {e.fid_target} "
                                         f"and CLIP >= {e.clip_target}", evals)
    return OfflineVerdict("success", f"target reached at the checkpoint of {first['samples_count']} images", evals,
                          position={"epoch_num": first["samples_count"], "samples_count": first["samples_count"]},
                          time_ms=first["time_ms"], timed_seconds=first["timed_seconds"],
                          samples=first["samples_count"])


def evaluation_benchmark(cfg, ctx):
    """A benchmark that only evaluates: its eval prompts and FID statistics read, the UNet in eval mode."""
    from models.stable_diffusion import SPEC

    bench = SPEC.benchmark(cfg, ctx, evaluation_only=True)
    bench.open_eval_data()
    bench.model.eval()
    return bench


_SCORER_BENCH = None  # the scoring process's evaluation-only benchmark (overlapped evaluation)
_SCORER_ERROR: Exception | None = None  # why it could not be built


def start_scorer(cfg, data_dir: str, directory: str, device: str) -> None:
    """Initializer of rank 0's background scorer: one process of its own, on the run's device. A failure is kept
    for score_checkpoint to raise: a failed initializer would only break the pool, the reason lost."""
    global _SCORER_ERROR
    try:
        _build_scorer(cfg, data_dir, directory, device)
    except Exception as e:
        _SCORER_ERROR = e


def _build_scorer(cfg, data_dir: str, directory: str, device: str) -> None:
    from models.stable_diffusion import SPEC
    from runtime.benchmark import RunContext
    from runtime.distributed import LaunchEnv
    from runtime.mlperf_log import MLPerfLogger
    from runtime.parallel import ParallelLayout

    global _SCORER_BENCH
    layout = ParallelLayout(1, 0)
    layout.build_groups()
    ctx = RunContext(SPEC, LaunchEnv("single", 0, 1, 0, 1, "127.0.0.1", 0), layout, torch.device(device),
                     MLPerfLogger(None, enabled=False), directory, data_dir, seed=0)  # the seed plays no part
    _SCORER_BENCH = evaluation_benchmark(cfg, ctx)


def score_checkpoint(entry: dict) -> tuple[float, float, float]:
    """In the scoring process: (pass ratio, FID, CLIP) of the checkpoint `entry` (read_index's form), also put in
    its directory's scores.json."""
    from models.stable_diffusion.benchmark import pass_ratio

    if _SCORER_ERROR is not None:
        raise RuntimeError(f"the scoring process could not be set up: {_SCORER_ERROR}") from _SCORER_ERROR
    bench, e = _SCORER_BENCH, _SCORER_BENCH.cfg.eval
    load_unet(bench.model, entry["path"])
    with torch.no_grad():
        fid, clip = bench.fid_and_clip()
    ScoreCache(os.path.dirname(entry["path"]), eval_settings(bench.cfg)).put(entry, fid, clip)
    return pass_ratio(fid, clip, e.fid_target, e.clip_target), fid, clip
