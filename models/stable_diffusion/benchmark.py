"""Stable Diffusion v2: what the run loop needs (build, warm-up, data, train step, eval, keys).

A train step: this rank's moments and captions of global batch `step`; the latent is sampled from the
moments, the captions encoded by the frozen text encoder, and the UNet trained on the v target at a uniform
timestep. The latent noise, timesteps and diffusion noise are drawn for the whole global batch from (seed,
step) and sliced per rank, so a global batch trains the same whatever the layout and after a resume.

An evaluation (every CEIL(512000 / GBS) steps, where the real flavours also checkpoint): the eval prompts
are spread over the ranks; each generates its images (DDIM, guidance, VAE decode), their FID features and
CLIP cosines; the features are gathered for the FID against the reference statistics, the cosines summed.
FID and CLIP are logged as two `eval_accuracy` lines (`metric`, `samples_count`; eval_accuracy_lines) that
the checker aggregates; evaluate() returns min(FID target / FID, CLIP / CLIP target) to the loop, at least 1
exactly when both targets hold. Checkpoints (each evaluation in the real flavours, run.checkpoint_every_blocks=1)
are copied to host memory at once and written by a background thread while training continues.

train.eval_mode=offline (the real flavours, as NVIDIA's): no evaluation during training; the UNet of each
checkpoint is kept (written in the background too) and, once the budget is spent, the checkpoints are evaluated
in order and reported as the rules ask (offline_eval.py); run_stop carries the time at which the first passing
one was taken. `python -m models.stable_diffusion.evaluate_checkpoints` evaluates them elsewhere.

train.eval_mode=overlapped: each checkpoint's UNet is kept the same way and rank 0's background process (runtime/
pending_eval.py) evaluates it from the file with the offline code while training continues; evaluate() returns a
PendingEval whose score (the pass ratio, with FID and CLIP as extras) the loop logs at its first sync point after
the score arrived, stopping the run there when it passes. run_stop carries the loop's stop time, not the passing
checkpoint's: the conservative choice of the two the rules allow (it counts the evaluation's latency and the training
done meanwhile), and the same rule as SSD's background scoring.
"""

from __future__ import annotations

import collections
import concurrent.futures
import math
import os
import secrets
import threading

import torch
import torch.distributed as dist
import torch.nn.functional as F
from mlperf_logging.mllog import constants

from kernels.backends import distributed_optimizer_class, optimizer_class
from models.stable_diffusion import diffusion, offline_eval
from models.stable_diffusion.config import StableDiffusionConfig, clip_config, vae_config
from models.stable_diffusion.frozen import (
    TextEncoder,
    build_clip,
    build_feature_net,
    build_vae,
    clip_cosines,
    decode_images,
)
from models.stable_diffusion.metrics import feature_statistics, frechet_distance
from models.stable_diffusion.model import build_unet
from models.stable_diffusion.parallelize import parallelize
from models.stable_diffusion.state_dict_adapter import load_ldm_checkpoint, split_checkpoint
from pipelines.laion import format as fmt
from pipelines.laion.loader import DIFFUSION_DRAWS, step_seed
from runtime import checkpoint, schedule
from runtime.benchmark import OfflineVerdict, RunContext
from runtime.data_parallel import sharding_groups, unwrap
from runtime.data_parallel_benchmark import DataParallelBenchmark
from runtime.mlperf_log import now_ms
from runtime.pending_eval import BackgroundScorer, PendingEval
from runtime.schedule import Block

EVAL_MODES = ("inline", "offline", "overlapped")
WARMUP_START_FACTOR = 1e-6  # LDM's LambdaLinearScheduler starts the warm-up here


def write_synthetic_data(cfg: StableDiffusionConfig, out_dir: str) -> None:
    from models.stable_diffusion.synthetic import write_synthetic_sd

    write_synthetic_sd(cfg, out_dir)


def learning_rate(step: int, *, base_lr: float, warmup_steps: int) -> float:
    """Linear from WARMUP_START_FACTOR x base to base over `warmup_steps`, then constant."""
    if step >= warmup_steps:
        return base_lr
    alpha = step / warmup_steps
    return base_lr * (WARMUP_START_FACTOR + (1 - WARMUP_START_FACTOR) * alpha)


def text_encoder(model_cfg, parts: dict, path: str) -> TextEncoder:
    """The frozen OpenCLIP text encoder of `model_cfg.clip` from split_checkpoint's parts of the checkpoint at
    `path` (also what pipelines/laion/prepare/encode_captions.py encodes the train captions with)."""
    text = TextEncoder(clip_config(model_cfg.clip)).load(parts["text"], f"{path} (cond_stage_model)")
    return text.eval().requires_grad_(False)


def hyperparameters(cfg: StableDiffusionConfig) -> dict:
    """The closed_stable_diffusion.yaml keys of a configuration (the reference logs the scaled lr)."""
    o, t = cfg.optim, cfg.train
    return {constants.GLOBAL_BATCH_SIZE: t.global_batch_size, constants.GRADIENT_ACCUMULATION_STEPS: t.grad_accum,
            constants.OPT_NAME: "adamw", "opt_adamw_beta_1": o.beta1, "opt_adamw_beta_2": o.beta2,
            "opt_adamw_epsilon": o.eps, "opt_adamw_weight_decay": o.weight_decay,
            constants.OPT_BASE_LR: o.lr_per_sample * t.global_batch_size,
            constants.OPT_LR_WARMUP_STEPS: o.warmup_steps}


def eval_interval_steps(cfg: StableDiffusionConfig) -> int:
    return math.ceil(cfg.train.checkpoint_every_images / cfg.train.global_batch_size)


def offline_checkpoint_dir(cfg: StableDiffusionConfig, run_dir: str) -> str:
    """Where the kept UNet checkpoints go (train.eval_mode offline and overlapped)."""
    return cfg.eval.checkpoints or os.path.join(cfg.run.checkpoint_dir or run_dir, offline_eval.DIR_NAME)


class StableDiffusionBenchmark(DataParallelBenchmark):
    precisions = ("fp32", "tf32", "bf16", "fp16")
    eval_counters = ("clip_sum", "images")

    def __init__(self, cfg: StableDiffusionConfig, ctx: RunContext, *, evaluation_only: bool = False):
        """`evaluation_only`: built to score another run's checkpoints (offline_eval.evaluation_benchmark)."""
        super().__init__(cfg, ctx)
        self.check_settings(cfg, ctx.run_dir, evaluation_only=evaluation_only)
        t, o = cfg.train, cfg.optim
        if ctx.device.type == "cpu" and t.cpu_threads > 0:
            torch.set_num_threads(t.cpu_threads)
        # Before the model is built: optim.distributed=true without apex fails in the first second. Our FusedAdamW,
        # or apex's under MLPERF_KERNELS=apex; with optim.distributed apex's DistributedFusedAdam (NVIDIA's v4.0),
        # which reduces the gradients itself: no DDP under it.
        adamw = distributed_optimizer_class("adamw") if o.distributed else optimizer_class("adamw")
        self.run_id = self._agree_on_run_id()  # a resumed run takes its first attempt's (load_state_dict)
        self.alphas_cumprod = diffusion.alphas_cumprod().to(ctx.device)
        self.model = parallelize(build_unet(cfg.model.unet), ctx.layout, ctx.device, compile=t.compile,
                                 ddp=not o.distributed)
        options = {}
        if o.distributed:
            process_group, shard_group, replica_group = sharding_groups(ctx.layout, ctx.launch.local_world_size)
            # NVIDIA's v4.0 SD settings: fp16 gradient reduce-scatter and parameter all-gather, contiguous buffers
            options = dict(process_group=process_group, shard_group=shard_group, replica_group=replica_group,
                           grad_sync_dtype=torch.float16, param_sync_dtype=torch.float16,
                           contiguous_param_buffer=True, contiguous_grad_buffer=True, bucket_cap_mb=288)
        self.optimizer = adamw(unwrap(self.model).parameters(), lr=o.lr_per_sample * t.global_batch_size,
                               betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=o.weight_decay, **options)
        self.memory_format = torch.channels_last if ctx.device.type == "cuda" else torch.contiguous_format
        self._frozen = None
        self._steps_done = 0
        self._writer: threading.Thread | None = None
        self._writer_error: BaseException | None = None
        self._scorer: BackgroundScorer | None = None  # rank 0's, train.eval_mode=overlapped
        self._overlapped: collections.deque = collections.deque()  # (samples, PendingEval) not yet logged

    @classmethod
    def check_settings(cls, cfg: StableDiffusionConfig, run_dir: str, *, evaluation_only: bool = False) -> None:
        """What is wrong with the settings, before anything is built or written into the run directory."""
        d, t, e = cfg.data, cfg.train, cfg.eval
        if d.loader not in ("stream", "indexed"):
            raise ValueError(f"data.loader={d.loader!r}: expected 'stream' or 'indexed'")
        if e.eta != 0.0:
            raise ValueError(f"eval.eta={e.eta}: the sampler is deterministic DDIM (eta 0)")
        if t.eval_mode not in EVAL_MODES:
            raise ValueError(f"train.eval_mode={t.eval_mode!r}: expected one of {EVAL_MODES}")
        if t.eval_mode == "overlapped" and cfg.run.checkpoint_every_blocks:
            # the loop awaits every pending score before a resume checkpoint: evaluation would stall training
            raise ValueError(f"train.eval_mode=overlapped with run.checkpoint_every_blocks="
                             f"{cfg.run.checkpoint_every_blocks}: each checkpoint would wait for its evaluation; "
                             f"set run.checkpoint_every_blocks=0 (a SIGTERM still saves one)")
        if e.offline_report not in offline_eval.REPORT_RULES:
            raise ValueError(f"eval.offline_report={e.offline_report!r}: expected one of {offline_eval.REPORT_RULES}")
        if t.max_images < t.checkpoint_every_images:
            raise ValueError(f"train.max_images={t.max_images} < train.checkpoint_every_images="
                             f"{t.checkpoint_every_images}: no evaluation would run")
        if t.eval_mode != "inline" and not evaluation_only:
            # A run that does not resume starts from an empty checkpoint directory: one holding checkpoints is
            # another run's (or an earlier attempt's that left no resume checkpoint), whose scores would count
            # as this run's.
            directory = offline_checkpoint_dir(cfg, run_dir)
            if not checkpoint.resumes(cfg.run) and offline_eval.holds_checkpoints(directory):
                raise ValueError(f"{directory} already holds checkpoints (unet_*.json) and this run does not "
                                 f"resume (no {checkpoint.LATEST} in run.checkpoint_dir): give it another "
                                 f"--run-dir or eval.checkpoints, or remove them")

    # -- the run's identity in its checkpoint directory (offline_eval.py) -------------------------------------
    def _agree_on_run_id(self) -> str:
        """Rank 0's random id, on every rank (each rank reads the checkpoint index; all must read the same)."""
        value = torch.tensor([secrets.randbits(62)], dtype=torch.int64, device=self.ctx.device)
        if self.ctx.launch.world_size > 1:
            dist.broadcast(value, src=0)
        return f"{int(value.item()):016x}"

    def state_dict(self) -> dict:
        return {**super().state_dict(), "run_id": self.run_id}

    def load_state_dict(self, state: dict) -> None:
        if "run_id" not in state:
            raise RuntimeError("Stable Diffusion checkpoint: missing key 'run_id' (written before runs had an id); "
                               "score its unet_checkpoints with models.stable_diffusion.evaluate_checkpoints")
        super().load_state_dict(state)
        self.run_id = state["run_id"]

    # -- frozen networks (loaded on first use: the warm-up, untimed, or the first step) --------------------
    def frozen(self) -> dict:
        if self._frozen is None:
            d, m, e, ctx = self.cfg.data, self.cfg.model, self.cfg.eval, self.ctx
            path = ctx.data_path(d.sd_checkpoint)
            parts = split_checkpoint(load_ldm_checkpoint(path), path)
            self._frozen = {
                "text": text_encoder(m, parts, path).to(ctx.device),
                "vae": build_vae(vae_config(m.vae), parts["vae"], f"{path} (first_stage_model)").to(ctx.device),
                "clip": build_clip(clip_config(m.clip), ctx.data_path(d.clip_checkpoint)).to(ctx.device),
                "features": build_feature_net(e.fid_network, e.fid_widths, ctx.data_path(d.fid_weights))
                .to(ctx.device),
            }
        return self._frozen

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> torch.Tensor:
        text = self.frozen()["text"]
        return text(text.tokenize(captions).to(self.ctx.device))

    # -- logging -----------------------------------------------------------------------------------------
    def log_hyperparameters(self) -> None:
        for key, value in hyperparameters(self.cfg).items():
            self.ctx.log.event(key, value)

    # -- steps ---------------------------------------------------------------------------------------------
    def learning_rate(self, step: int) -> float:
        o = self.cfg.optim
        return learning_rate(step, base_lr=o.lr_per_sample * self.global_batch_size, warmup_steps=o.warmup_steps)

    def _draws(self, step: int, n_local: int, shape: tuple[int, ...]):
        """(latent eps, timesteps, diffusion noise) of this rank's slice of global batch `step`, on the device that
        drew them: the CPU, or on CUDA the GPU itself (the whole global batch's draws take one CPU thread ~64 ms
        a step at GBS 512, a large share of an H100 step; on the GPU microseconds). Either way the same numbers
        whatever the layout and after a resume; CUDA's generator gives other numbers than the CPU's."""
        dev = self.ctx.device if self.ctx.device.type == "cuda" else torch.device("cpu")
        g = torch.Generator(device=dev).manual_seed(step_seed(self.ctx.seed, step, DIFFUSION_DRAWS))
        gbs = self.global_batch_size
        eps = torch.randn((gbs, *shape), generator=g, device=dev)
        t = torch.randint(0, len(self.alphas_cumprod), (gbs,), generator=g, device=dev)
        noise = torch.randn((gbs, *shape), generator=g, device=dev)
        first = self.ctx.layout.dp_rank * n_local
        return eps[first:first + n_local], t[first:first + n_local], noise[first:first + n_local]

    def _micro_batches(self, moments: torch.Tensor, captions: list[str] | torch.Tensor, step: int) -> list:
        """`captions`: the captions, or their pre-encoded float16 contexts (data.encoded_captions)."""
        n = moments.shape[0]
        eps, t, noise = self._draws(step, n, (moments.shape[1] // 2, *moments.shape[2:]))
        dev = self.ctx.device
        if isinstance(captions, torch.Tensor):  # what the text encoder gave, once, offline: no encoder here
            context = captions.to(dev, non_blocking=True).float()
        else:
            context = self.encode_text(captions)
        tensors = (moments.to(dev, non_blocking=True), context, eps.to(dev), t.to(dev), noise.to(dev))  # no-ops on CUDA
        return self.split_micro_batches(tensors)

    def loss(self, micro_batch) -> torch.Tensor:
        moments, context, eps, t, noise = micro_batch
        z0 = fmt.latent_from_moments(moments, eps)
        x_t = diffusion.noised(z0, noise, t, self.alphas_cumprod).contiguous(memory_format=self.memory_format)
        with self.autocast():
            v = self.model(x_t, t, context)
        return F.mse_loss(v.float(), diffusion.v_target(z0, noise, t, self.alphas_cumprod))

    def train_micro_batches(self, step: int) -> list:
        self._steps_done = step + 1
        moments, captions = self.train_data.batch(step)
        return self._micro_batches(moments, captions, step)

    def synthetic_batches(self) -> tuple[list, object]:
        size, n = self.cfg.model.latent_size, self.micro_batch * self.cfg.train.grad_accum
        g = torch.Generator().manual_seed(0)
        moments = torch.randn(n, fmt.MOMENT_CHANNELS, size, size, generator=g)
        captions = ["a warm-up caption"] * n
        if self.cfg.data.encoded_captions:  # the step's path with encoded shards: a float16 context in
            captions = self.encode_text(captions).to(torch.float16)
        return self._micro_batches(moments, captions, 0), ["a warm-up prompt"] * 2

    # -- evaluation -------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list[str], indices: list[int]) -> torch.Tensor:
        """Images in [0, 1] of `prompts`; prompt i's initial noise comes from (eval.seed, indices[i])."""
        e, m, dev = self.cfg.eval, self.cfg.model, self.ctx.device
        shape = (m.unet.in_channels, m.latent_size, m.latent_size)
        x_T = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(e.seed * 1_000_003 + i))
                           for i in indices]).to(dev)
        context = self.encode_text(prompts)
        uncond = self.encode_text([""] * len(prompts))
        model = unwrap(self.model)

        def predict(x, t, c):
            with self.autocast():
                return model(x.contiguous(memory_format=self.memory_format), t, c)

        z0 = diffusion.ddim_sample(predict, x_T, context, uncond, self.alphas_cumprod, steps=e.ddim_steps,
                                   guidance=e.guidance)
        return decode_images(self.frozen()["vae"], z0.float(), fmt.SCALE_FACTOR)

    @torch.no_grad()
    def _score(self, prompts: list[str], indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(FID features, CLIP cosines) of the generated images of `prompts`."""
        frozen = self.frozen()
        images = self.generate(prompts, indices)
        tokens = frozen["text"].tokenize(prompts).to(self.ctx.device)
        return frozen["features"](images).double(), clip_cosines(frozen["clip"], images, tokens).double()

    def eval_counts(self, batch) -> torch.Tensor:
        """Warm-up only (evaluate() below does the real thing): the eval path on a few prompts."""
        _, cosines = self._score(batch, list(range(len(batch))))
        return torch.stack([cosines.sum(), torch.tensor(float(len(batch)), dtype=torch.float64,
                                                        device=self.ctx.device)])

    def evaluate(self) -> float | PendingEval:
        if self.cfg.train.eval_mode == "overlapped":
            return self._evaluate_overlapped()
        e = self.cfg.eval
        fid, clip = self.fid_and_clip()
        samples = self._steps_done * self.global_batch_size
        self._scores = {"FID": fid, "CLIP": clip, "samples_count": samples}
        if self.ctx.is_main:
            print(f"eval after {samples} images: FID {fid:.4f} (target <= {e.fid_target}), CLIP {clip:.4f} "
                  f"(target >= {e.clip_target})", flush=True)
        return pass_ratio(fid, clip, e.fid_target, e.clip_target)

    def fid_and_clip(self) -> tuple[float, float]:
        """FID and CLIP score of the current weights over every eval prompt (every rank, collectively)."""
        e, dp = self.cfg.eval, self.ctx.layout.dp
        self.model.eval()
        prompts = self.eval_data["prompts"]
        mine = list(range(self.ctx.layout.dp_rank, len(prompts), dp))  # strided: balanced to one prompt
        features, cosines = [], []
        for first in range(0, len(mine), e.batch):
            idx = mine[first:first + e.batch]
            f, c = self._score([prompts[i] for i in idx], idx)
            features.append(f)
            cosines.append(c)
        dim = self.frozen()["features"].dim
        local_f = torch.cat(features) if features else torch.zeros(0, dim, dtype=torch.float64, device=self.ctx.device)
        local_c = torch.cat(cosines) if cosines else torch.zeros(0, dtype=torch.float64, device=self.ctx.device)
        all_f = local_f
        totals = torch.stack([local_c.sum(), torch.tensor(float(len(local_c)), dtype=torch.float64,
                                                            device=self.ctx.device)])
        if self.ctx.launch.world_size > 1:
            group = self.ctx.layout.dp_group()
            # Ranks hold len(prompts) // dp or one more: pad to the largest, gather, drop the padding.
            most = math.ceil(len(prompts) / dp)
            padded = torch.zeros(most, dim, dtype=torch.float64, device=local_f.device)
            padded[:len(local_f)] = local_f
            gathered = [torch.empty_like(padded) for _ in range(dp)]
            dist.all_gather(gathered, padded, group=group)
            all_f = torch.cat([g[:len(range(r, len(prompts), dp))] for r, g in enumerate(gathered)])
            dist.all_reduce(totals, group=group)
        if int(totals[1]) != self.cfg.data.eval_samples:
            raise RuntimeError(f"evaluated {int(totals[1])} prompts, expected all {self.cfg.data.eval_samples}")
        mu, sigma = feature_statistics(all_f.cpu().numpy())
        return frechet_distance(mu, sigma, *self.eval_data["stats"]), float(totals[0] / totals[1])

    def eval_accuracy_lines(self, value: float) -> list[tuple[float, dict]]:
        """FID and CLIP of the last evaluation, a line each (what the checker aggregates per samples_count); in
        overlapped mode of the oldest evaluation not yet logged (the loop logs scores in evaluation order)."""
        if self.cfg.train.eval_mode == "overlapped":
            if not self._overlapped or self._overlapped[0][1].extras is None:
                raise RuntimeError("eval_accuracy_lines: no arrived overlapped evaluation to log")
            samples, pending = self._overlapped.popleft()
            fid, clip = pending.extras
            if self.ctx.is_main:
                e = self.cfg.eval
                print(f"eval of the checkpoint of {samples} images: FID {fid:.4f} (target <= {e.fid_target}), "
                      f"CLIP {clip:.4f} (target >= {e.clip_target})", flush=True)
            self._scores = {"FID": fid, "CLIP": clip, "samples_count": samples}
        samples = self._scores["samples_count"]
        return [(self._scores[m], {"metric": m, "samples_count": samples}) for m in ("FID", "CLIP")]

    def _evaluate_overlapped(self) -> PendingEval:
        """Keep this checkpoint's UNet (written in the background) and have rank 0's scorer evaluate the file while
        training continues; every rank learns the score, FID and CLIP at the same sync point (PendingEval)."""
        samples, future = self._steps_done * self.global_batch_size, None
        if self.ctx.is_main:
            future = concurrent.futures.Future()
            unet = _host_copy(unwrap(self.model).state_dict())  # synchronises with the device: the step is done
            # timed_seconds: None, run_stop does not take this checkpoint's time in this mode
            meta = self._checkpoint_meta(self._steps_done, samples, None)
            directory, scorer = self.offline_checkpoint_dir(), self._scorer

            def write_then_score():
                try:
                    self._write_kept(directory, unet, meta)
                    entry = {**meta, "path": offline_eval.checkpoint_stem(directory, samples) + ".pt"}
                    _forward(scorer.submit(offline_eval.score_checkpoint, entry), future)
                except Exception as e:  # the loop's next poll fails every rank with it
                    future.set_exception(e)

            self._write_in_background(write_then_score)
        pending = PendingEval(future, world_size=self.ctx.launch.world_size, device=self.ctx.device, extras=2)
        self._overlapped.append((samples, pending))
        return pending

    # -- data and blocks -------------------------------------------------------------------------------
    def open_data(self) -> dict:
        from pipelines.laion.loader import IndexedMoments, StreamingMoments

        d, ctx = self.cfg.data, self.ctx
        common = dict(latent_size=self.cfg.model.latent_size, global_batch_size=self.global_batch_size,
                      rank=ctx.layout.dp_rank, world_size=ctx.layout.dp, seed=ctx.seed,
                      context_dim=self.cfg.model.unet.context_dim if d.encoded_captions else None)
        if d.loader == "indexed":
            self.train_data = IndexedMoments(ctx.data_dir, **common)
        else:
            self.train_data = StreamingMoments(ctx.data_dir, num_workers=d.num_workers, shuffle_buffer=d.shuffle_buffer,
                                               num_samples=d.train_samples, **common)
        prompts = self.open_eval_data()
        if self.cfg.train.eval_mode == "overlapped" and ctx.is_main:  # its start-up overlaps the first block
            self._scorer = BackgroundScorer(offline_eval.start_scorer,
                                            (self.cfg, ctx.data_dir, self.offline_checkpoint_dir(), str(ctx.device)))
            self._scorer.start()
        return self.check_sizes({"train_samples": self.train_data.num_samples, "eval_samples": len(prompts)})

    def open_eval_data(self) -> list[str]:
        """The eval prompts and FID statistics (all an evaluation of checkpoints needs); returns the prompts."""
        prompts = fmt.read_prompts(self.ctx.data_path(fmt.PROMPTS_FILE))
        stats = fmt.read_fid_stats(self.ctx.data_path(fmt.STATS_FILE), self.frozen()["features"].dim)
        self.eval_data = {"prompts": prompts, "stats": stats}
        return prompts

    def budget_steps(self) -> int:
        t = self.cfg.train
        return math.ceil(t.max_images / t.global_batch_size)

    def blocks(self) -> list[Block]:
        """An evaluation every CEIL(checkpoint_every_images / GBS) steps, up to the budget. eval_start / eval_stop
        (and so eval_accuracy and run_stop) carry samples_count besides epoch_num, as the spec lists them."""
        ends = schedule.every(eval_interval_steps(self.cfg), self.budget_steps())
        return schedule.blocks(ends, "samples", global_batch_size=self.global_batch_size, samples_count_on_evals=True)

    # -- checkpoints: written in the background (NVIDIA's are too), so that training goes on meanwhile ------
    def save_checkpoint(self, directory: str, common: dict) -> None:
        state = {**common, "benchmark": self.state_dict()}
        if self.ctx.is_main:
            # A host copy now: the next optimizer step updates the parameters and moments in place.
            host = _host_copy(state)
            self._write_in_background(lambda: checkpoint.save_atomic(host, os.path.join(directory, checkpoint.LATEST)))

    def _write_in_background(self, write) -> None:
        """One writer at a time: the previous write finishes (or fails, here) before the next starts."""
        self.wait_for_checkpoint()

        def run():
            try:
                write()
            except BaseException as e:  # re-raised on the training thread by wait_for_checkpoint
                self._writer_error = e

        self._writer = threading.Thread(target=run, name="checkpoint-writer", daemon=False)
        self._writer.start()

    # -- offline evaluation (train.eval_mode=offline; models/stable_diffusion/offline_eval.py); its checkpoint
    # directory also holds the overlapped mode's checkpoints ----------------------------------------------------
    def evaluates_offline(self) -> bool:
        return self.cfg.train.eval_mode == "offline"

    def offline_checkpoint_dir(self) -> str:
        return offline_checkpoint_dir(self.cfg, self.ctx.run_dir)

    def _checkpoint_meta(self, step: int, samples: int, timed_seconds: float | None) -> dict:
        return {"samples_count": samples, "step": step, "time_ms": now_ms(), "timed_seconds": timed_seconds,
                "seed": self.ctx.seed, "run_id": self.run_id}

    def _write_kept(self, directory: str, unet: dict, meta: dict) -> None:
        """A kept checkpoint; the one at the budget's end also marks the training done (evaluate_checkpoints then
        knows that no checkpoint is still to come)."""
        offline_eval.write_checkpoint(directory, unet, meta)
        if meta["step"] >= self.budget_steps():
            offline_eval.write_training_done(directory, self.run_id, meta["samples_count"])

    def keep_for_offline_eval(self, step: int, samples: int, timed_seconds: float) -> None:
        if not self.ctx.is_main:
            return
        unet = _host_copy(unwrap(self.model).state_dict())  # synchronises with the device: the step is done
        meta = self._checkpoint_meta(step, samples, timed_seconds)
        directory = self.offline_checkpoint_dir()
        self._write_in_background(lambda: self._write_kept(directory, unet, meta))

    def evaluate_offline(self, preempted=None) -> OfflineVerdict | None:
        """`preempted()`: the loop's SIGTERM flag agreed across ranks, asked between checkpoints; None when it was
        set (the scores found so far are in scores.json, and the resumed run evaluates only the rest)."""
        self.wait_for_checkpoint()  # rank 0's last checkpoint is on disk before any rank reads the directory
        if self.ctx.launch.world_size > 1:
            dist.barrier()
        self.model.eval()
        # this run's checkpoints only, up to its budget (the whole of it is trained when this runs)
        entries, chosen = offline_eval.score_checkpoints(
            self, self.offline_checkpoint_dir(), self.cfg.eval.offline_report, run_id=self.run_id,
            max_samples=self.budget_steps() * self.global_batch_size, preempted=preempted)
        if chosen is None:
            return None
        return offline_eval.log_and_decide(self, entries, chosen)

    def wait_for_checkpoint(self) -> None:
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._writer_error is not None:
            error, self._writer_error = self._writer_error, None
            raise RuntimeError(f"writing the checkpoint failed: {error}") from error

    def close(self) -> None:
        close = getattr(self.train_data, "close", None)
        if close is not None:
            close()
        self.wait_for_checkpoint()
        if self._scorer is not None:  # a score still computing is of a checkpoint the finished run will not log
            self._scorer.close(abandon=True)
            self._scorer = None


def _host_copy(value):
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _host_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_host_copy(v) for v in value)
    return value


def _forward(source: concurrent.futures.Future, target: concurrent.futures.Future) -> None:
    """`target` gets `source`'s outcome when it has one."""
    def done(f: concurrent.futures.Future) -> None:
        if f.cancelled():
            target.cancel()
        elif f.exception() is not None:
            target.set_exception(f.exception())
        else:
            target.set_result(f.result())

    source.add_done_callback(done)


def pass_ratio(fid: float, clip: float, fid_target: float, clip_target: float) -> float:
    """min(FID target / FID, CLIP / CLIP target): >= 1 exactly when FID <= target and CLIP >= target."""
    if not (math.isfinite(fid) and math.isfinite(clip)):
        return math.nan
    fid_ratio = math.inf if fid <= 0 else fid_target / fid
    return float(min(fid_ratio, clip / clip_target))



