"""The run loop on a toy benchmark: stop at target, budget, NaN, max_steps + resume, and the MLPerf log."""

import json
import time

import torch
from conftest import compliance

from runtime.benchmark import Benchmark, BenchmarkSpec, OfflineVerdict, RunContext
from runtime.config import RunConfig
from runtime.distributed import LaunchEnv
from runtime.loop import EXIT_NOT_CONVERGED, EXIT_SUCCESS, RunLoop
from runtime.mlperf_log import MLPerfLogger, now_ms
from runtime.parallel import ParallelLayout
from runtime.schedule import Block


class Toy(Benchmark):
    """Fits y = 3x with SGD; 'accuracy' is 1 - |w - 3| / 3, so it rises as training goes on."""

    global_batch_size = 8

    def __init__(self, ctx, evals_per_block=1, nan_at=None, steps_per_block=5, blocks=6):
        super().__init__(None, ctx)
        self.w = torch.zeros(1, requires_grad=True)
        self.opt = torch.optim.SGD([self.w], lr=0.05)
        self.nan_at, self.steps_per_block, self.n_blocks = nan_at, steps_per_block, blocks
        self.losses = {}

    def log_hyperparameters(self):
        log = self.ctx.log
        for key, value in [("global_batch_size", 8), ("gradient_accumulation_steps", 1), ("opt_name", "lars"),
                           ("lars_opt_base_learning_rate", 0.05), ("lars_opt_end_learning_rate", 0.0001),
                           ("lars_opt_learning_rate_decay_poly_power", 2), ("lars_opt_learning_rate_decay_steps", 30),
                           ("lars_epsilon", 0.0), ("lars_opt_learning_rate_warmup_epochs", 0),
                           ("lars_opt_momentum", 0.9), ("lars_opt_weight_decay", 0.0001)]:
            log.event(key, value)

    def warmup(self, steps):
        pass

    def open_data(self):
        return {"train_samples": 40, "eval_samples": 8}

    def blocks(self):
        return [Block(self.steps_per_block, {"first_epoch_num": i + 1, "epoch_count": 1},
                      {"first_epoch_num": i + 1}, {"epoch_num": i + 1}) for i in range(self.n_blocks)]

    def train_step(self, step):
        g = torch.Generator().manual_seed(step)
        x = torch.randn(8, generator=g)
        loss = ((self.w * x - 3 * x) ** 2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        if self.nan_at is not None and step >= self.nan_at:
            loss = loss * float("nan")
        self.losses[step] = loss.item()
        return loss.detach()

    def evaluate(self):
        return float(1 - abs(self.w.item() - 3) / 3)

    def state_dict(self):
        return {"w": self.w.detach().clone(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state):
        with torch.no_grad():
            self.w.copy_(state["w"])
        self.opt.load_state_dict(state["opt"])


def _spec(**changes):
    # a real benchmark's log name, so that the compliance checker has a rule file for the toy's log
    return BenchmarkSpec(**{**dict(name="resnet", flavours={"debug": lambda: None}, benchmark=Toy,
                                   write_synthetic_data=lambda cfg, out: None, metric="accuracy",
                                   higher_is_better=True, eval_unit="epochs"), **changes})


def _ctx(tmp_path, name="log.txt", spec=None):
    log = MLPerfLogger(str(tmp_path / name), enabled=True, stdout=False)
    launch = LaunchEnv("single", 0, 1, 0, 1, "127.0.0.1", 29500)
    return RunContext(spec or _spec(), launch, ParallelLayout(1, 0), torch.device("cpu"), log, str(tmp_path), "",
                      seed=5)


class ToyOffline(Toy):
    """Evaluates after training, as Stable Diffusion's offline mode: keeps w at each block end, then scores the
    kept values in order and stops at the first reaching `target`."""

    def __init__(self, ctx, target, **toy_args):
        super().__init__(ctx, **toy_args)
        self.target, self.kept = target, []
        self.scores, self.evaluated = {}, []  # epoch -> accuracy found (SD's scores.json); this attempt's evaluations

    def evaluates_offline(self):
        return True

    def evaluate(self):
        raise AssertionError("an offline benchmark is not evaluated during training")

    def keep_for_offline_eval(self, step, samples, timed_seconds):
        time.sleep(0.02)  # distinct time stamps per block
        self.kept.append({"epoch": len(self.kept) + 1, "w": self.w.item(), "time_ms": now_ms(),
                          "timed_seconds": timed_seconds, "samples": samples})

    def evaluate_offline(self, preempted=None):
        log, evals = self.ctx.log, []
        for kept in self.kept:
            if kept["epoch"] not in self.scores:  # an evaluation still to do: a SIGTERM may stop the phase first
                if preempted is not None and preempted():
                    return None
                self.scores[kept["epoch"]] = 1 - abs(kept["w"] - 3) / 3
                self.evaluated.append(kept["epoch"])
            accuracy, position = self.scores[kept["epoch"]], {"epoch_num": kept["epoch"]}
            log.start("eval_start", metadata=position)
            log.event("eval_accuracy", accuracy, metadata=position)
            log.end("eval_stop", metadata=position)
            evals.append((kept["samples"], accuracy))
            if accuracy >= self.target:
                return OfflineVerdict("success", "target reached", evals, position=position, time_ms=kept["time_ms"],
                                      timed_seconds=kept["timed_seconds"], samples=kept["samples"])
        return OfflineVerdict("aborted", "no kept weights reach the target", evals)


def _run(tmp_path, run_cfg, name="log.txt", spec=None, bench_class=Toy, **toy_args):
    ctx = _ctx(tmp_path, name, spec)
    ctx.log.event("cache_clear", True)
    ctx.log.start("init_start")
    ctx.log.log_submission("resnet", org="t", platform="cpu", division="closed", status="onprem")
    ctx.log.event("seed", ctx.seed)
    bench = bench_class(ctx, **toy_args)
    bench.log_hyperparameters()
    loop = RunLoop(bench, ctx, run_cfg)
    loop.try_resume()
    result = loop.run()
    ctx.log.close()
    return result, bench, tmp_path / name


def _events(path):
    return [json.loads(line.split(":::MLLOG ", 1)[1]) for line in path.read_text().splitlines()]


def test_stops_at_target_with_a_compliant_log(tmp_path):
    result, bench, log = _run(tmp_path, RunConfig(target=0.8, log_every_steps=2))
    assert result.status == "success" and result.exit_code == EXIT_SUCCESS
    # accuracy is monotone in training here, so the run stops at the first eval >= 0.8
    values = [v for _, v in result.evals]
    assert values[-1] >= 0.8 and all(v < 0.8 for v in values[:-1]) and len(values) < 6
    events = _events(log)
    keys = [e["key"] for e in events]
    assert keys.count("run_stop") == 1 and keys.count("eval_accuracy") == len(values)
    assert events[keys.index("run_stop")]["metadata"]["status"] == "success"
    assert keys.index("init_stop") < keys.index("run_start") < keys.index("train_samples")
    ok, out = compliance(log)
    assert ok, out


def test_budget_exhausted_is_aborted(tmp_path):
    result, _, log = _run(tmp_path, RunConfig(target=1.01, log_every_steps=5))
    assert result.status == "aborted" and result.exit_code == EXIT_NOT_CONVERGED and len(result.evals) == 6
    assert _events(log)[-1]["metadata"]["status"] == "aborted"
    ok, out = compliance(log)
    assert ok, out


def test_non_finite_loss_aborts_at_the_next_sync_point(tmp_path):
    result, bench, _ = _run(tmp_path, RunConfig(target=0.99, log_every_steps=2), nan_at=6)
    assert result.status == "aborted" and "non-finite loss" in result.reason
    assert max(bench.losses) == 7  # steps 6 and 7 ran; the check at step 8 (global count) stopped it


def test_resume_continues_with_the_same_next_loss(tmp_path):
    full, full_bench, _ = _run(tmp_path / "a", RunConfig(target=1.01, log_every_steps=1, max_steps=13))
    ck = str(tmp_path / "ck")
    first, _, _ = _run(tmp_path / "b", RunConfig(target=1.01, log_every_steps=1, max_steps=7, checkpoint_dir=ck))
    assert first.status == "aborted" and "max_steps" in first.reason
    second, resumed, _ = _run(tmp_path / "c", RunConfig(target=1.01, log_every_steps=1, max_steps=13,
                                                        checkpoint_dir=ck))
    assert min(resumed.losses) == 7  # it did not redo steps 0..6
    for step in range(7, 13):
        assert resumed.losses[step] == full_bench.losses[step]
    assert [v for _, v in second.evals] == [v for _, v in full.evals]


def test_train_samples_can_be_logged_at_stop_as_samples_trained(tmp_path):
    result, _, log = _run(tmp_path, RunConfig(target=0.8, log_every_steps=5), spec=_spec(train_samples_at_stop=True))
    events = _events(log)
    keys = [e["key"] for e in events]
    assert keys.count("train_samples") == 1
    assert keys.index("train_samples") == keys.index("run_stop") - 1
    assert events[keys.index("train_samples")]["value"] == result.samples == 20 * 8
    ok, out = compliance(log)
    assert ok, out


def test_offline_evaluation_trains_to_the_budget_and_stops_at_the_first_passing_checkpoint(tmp_path):
    result, bench, log = _run(tmp_path, RunConfig(target=0.8, log_every_steps=5), bench_class=ToyOffline, target=0.8)
    events = _events(log)
    keys = [e["key"] for e in events]
    assert len(bench.kept) == 6 and keys.count("block_stop") == 6  # the whole budget trained, no eval meanwhile
    assert keys.index("eval_start") > max(i for i, k in enumerate(keys) if k == "block_stop")
    first = next(k for k in bench.kept if 1 - abs(k["w"] - 3) / 3 >= 0.8)
    assert 1 < first["epoch"] < 6
    assert result.status == "success" and result.exit_code == EXIT_SUCCESS
    assert [s for s, _ in result.evals] == [k["samples"] for k in bench.kept[:first["epoch"]]]
    stop, start = events[-1], events[keys.index("run_start")]
    # run_stop: last in the file, stamped with the time the first passing weights were kept, at their position
    assert stop["key"] == "run_stop" and stop["metadata"] == {**stop["metadata"], "status": "success",
                                                              "epoch_num": first["epoch"]}
    assert stop["time_ms"] == first["time_ms"] < events[keys.index("eval_start")]["time_ms"]
    assert result.seconds == (stop["time_ms"] - start["time_ms"]) / 1000
    assert result.total_seconds == first["timed_seconds"]
    assert result.samples == first["samples"] < len(bench.kept) * bench.kept[0]["samples"]  # not the whole budget
    ok, out = compliance(log)
    assert ok, out


def test_offline_evaluation_without_a_pass_is_aborted_at_the_end(tmp_path):
    result, bench, log = _run(tmp_path, RunConfig(target=0.8, log_every_steps=5), bench_class=ToyOffline, target=2)
    events = _events(log)
    assert result.status == "aborted" and result.exit_code == EXIT_NOT_CONVERGED and len(result.evals) == 6
    assert events[-1]["key"] == "run_stop" and events[-1]["metadata"]["status"] == "aborted"
    assert events[-1]["time_ms"] >= events[-2]["time_ms"]  # not back-dated


class ToySlowPreempted(Toy):
    """Steps of ~10 ms; a SIGTERM (the loop's flag set, as its handler does) arrives during step `preempt_at`."""

    def __init__(self, ctx, preempt_at, **kw):
        super().__init__(ctx, **kw)
        self.preempt_at, self.flag = preempt_at, None

    def train_step(self, step):
        time.sleep(0.01)
        if step == self.preempt_at:
            self.flag.requested = True
        return super().train_step(step)


def _run_preempted(tmp_path, preempt_at, poll_seconds):
    ctx = _ctx(tmp_path)
    bench = ToySlowPreempted(ctx, preempt_at, steps_per_block=60, blocks=1)
    loop = RunLoop(bench, ctx, RunConfig(target=1.01, log_every_steps=20, preempt_poll_seconds=poll_seconds,
                                         checkpoint_dir=str(tmp_path / "ck")))
    bench.flag = loop.preemption
    result = loop.run()
    ctx.log.close()
    return result, max(bench.losses)


def test_a_sigterm_between_sync_points_is_acted_on_within_the_poll_interval(tmp_path):
    """Sync points every 20 steps; polls every ~50 ms (about 5 steps of 10 ms) after the first one: a SIGTERM during
    step 23 saves and exits well before the sync point of step 40. Before the first sync point (no step time known
    yet) every step polls."""
    result, last = _run_preempted(tmp_path / "a", preempt_at=23, poll_seconds=0.05)
    assert result.exit_code == 143 and "preempted" in result.reason
    assert 23 <= last < 39, last
    assert (tmp_path / "a" / "ck").exists()
    early, last = _run_preempted(tmp_path / "b", preempt_at=3, poll_seconds=0.05)
    assert early.exit_code == 143 and last == 3  # polled after step 3 itself


def test_without_the_poll_a_sigterm_waits_for_the_next_sync_point(tmp_path):
    result, last = _run_preempted(tmp_path, preempt_at=23, poll_seconds=0)
    assert result.exit_code == 143 and last == 39  # the sync point after step 39 (global count 40)


class ToyOfflinePreempted(ToyOffline):
    """A SIGTERM (the loop's flag, as its handler sets it) arrives while the offline phase evaluates epoch
    `preempt_during`."""

    def __init__(self, ctx, target, preempt_during, **toy_args):
        super().__init__(ctx, target, **toy_args)
        self.preempt_during, self.flag = preempt_during, None

    def evaluate_offline(self, preempted=None):
        def preempted_after_scoring():
            if self.evaluated and self.evaluated[-1] == self.preempt_during:
                self.flag.requested = True
            return preempted()
        return super().evaluate_offline(preempted_after_scoring)


def test_a_sigterm_during_the_offline_evaluation_saves_and_the_resumed_run_evaluates_the_rest(tmp_path):
    ck = str(tmp_path / "ck")
    ctx = _ctx(tmp_path / "a")
    bench = ToyOfflinePreempted(ctx, target=2, preempt_during=2)  # no pass: every checkpoint is evaluated
    loop = RunLoop(bench, ctx, RunConfig(target=0.8, log_every_steps=5, checkpoint_dir=ck))
    bench.flag = loop.preemption
    result = loop.run()
    ctx.log.close()
    # stopped between checkpoints 2 and 3: exit 143 through the loop's preemption path, a resume checkpoint saved
    assert result.exit_code == 143 and "preempted" in result.reason and bench.evaluated == [1, 2]
    assert _events(tmp_path / "a" / "log.txt")[-1]["metadata"]["status"] == "aborted"
    # the resumed run trains nothing more and evaluates only the checkpoints not yet scored
    ctx = _ctx(tmp_path / "b")
    resumed = ToyOffline(ctx, target=2)
    resumed.kept, resumed.scores = bench.kept, dict(bench.scores)  # on disk, as SD's checkpoints and scores.json
    loop = RunLoop(resumed, ctx, RunConfig(target=0.8, log_every_steps=5, checkpoint_dir=ck))
    assert loop.try_resume()
    result = loop.run()
    ctx.log.close()
    assert resumed.losses == {} and resumed.evaluated == [3, 4, 5, 6]
    assert result.exit_code == EXIT_NOT_CONVERGED and len(result.evals) == 6
