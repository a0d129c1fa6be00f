"""The DeepSpeed training loop every stage shares (segnet, pretrain, finetune).

A stage builds its model and its DALI loaders and hands them to `fit` with a `step_fn` that turns
one batch into a loss; everything else lives here, once:

- distributed start-up (`init_distributed`): the deepspeed launcher's RANK/WORLD_SIZE, or a world
  of one for a plain `trainer <stage>`; gloo on CPU (DS_ACCELERATOR=cpu), NCCL on GPUs;
- the DeepSpeed JSON (`read_ds_config`): the global batch must equal micro-batch x gradient
  accumulation x world size (one clear error at start otherwise); the CSV monitor (and the
  TensorBoard one when tensorboard is installed) is pointed into the run directory;
- optimizer parameter groups (`param_groups`): no weight decay on biases, 1-D parameters and the
  model's `no_weight_decay()`; optional layer-wise lr decay (timm's helper, ViTPose/BEiT style);
- the learning rate, set by us before every optimizer step (`lr_at`): linear warm-up, then a
  half-cycle cosine to `min_lr`, per step as MAE does, times each group's `lr_scale`. The JSON's
  optimizer lr is the peak lr; the JSON must not carry a DeepSpeed "scheduler" (it would fight
  this one, and it cannot know the run's length);
- the run directory `runs/<name>/`: config.json (every option, the resolved DeepSpeed config, the
  code version), metrics.jsonl, monitor/ (DeepSpeed's CSV monitor), figures/*.png, checkpoints/;
- checkpoints every N steps and at the end, the last k kept; each holds DeepSpeed's state (model,
  optimizer, step) plus our sidecars posemae.json (stage, model signature, step, world size) and
  rank<r>.json (that rank's loader positions); `latest` is replaced atomically once every rank's
  files are complete and fsynced, so it only ever names a complete checkpoint (a kill -9 mid-write
  leaves the previous one as `latest`). A write that fails on any rank (disk full) stops every
  rank with one CheckpointWriteError naming the error and the `latest` still intact; the
  incomplete tag directory is removed, nothing older is touched;
- `--resume`: model, optimizer, step, schedule and every loader's position come back; randomness
  is re-seeded from (seed, rank, micro-step) before every micro-batch, so a run killed at any
  moment and resumed gives the same weights as an uninterrupted run (bit for bit on CPU, where
  deterministic algorithms are switched on);
- a sample DALI cannot read stops the run with one SampleError naming its shard and key; with
  --skip-bad-samples the loader leaves it out (shards.pipelines.Loader) and the loop counts it
  (metrics lines' bad_samples, summed over ranks) and logs it (stderr and
  ranks/rank<r>-bad-samples.jsonl);
- a rank that dies (kill -9, OOM, a lost node): the deepspeed launcher SIGTERMs the others, which
  exit at once, even from inside a collective, naming the dead rank and the checkpoint --resume
  continues from (RankLostError where a collective notices the dead peer first); a peer that hangs
  or whose node vanished without closing its connections stops the others after --dist-timeout;
- a NaN/inf loss on any rank stops every rank with the step and the batch's sample keys logged;
  nothing is saved after it, so the last good checkpoint stays `latest`;
- progress on rank 0 (a tqdm bar on a terminal, a plain line every 10 s in a log:
  shards.progress), and periodic figures from the stage's `figure_fn`;
- per rank, ranks/rank<r>.json at the end (steps/s, peak RSS, a digest of the parameters, which
  data-parallel ranks must share) and, with --log-keys, every micro-batch's sample keys.

The run directory must be on a filesystem every node sees (checkpoints are written by all ranks,
`latest` by rank 0). ZeRO stage 3 and fp16 are refused (bf16 or fp32; stage 0-2).

Public API
    TrainSettings(run_dir, ds_config, epochs, warmup_epochs, min_lr=0.0, seed=0, checkpoint_every=1000,
                  keep_checkpoints=3, log_every=10, figure_every=500, resume=False, max_steps=None,
                  log_keys=False, wandb=False, skip_bad_samples=False)
    training_options(epochs, warmup_epochs, checkpoint_every=1000, figure_every=500)   click decorator
    settings_from_options(options: dict, stage, default_config) -> TrainSettings   pops the shared options
    clear_errors(command)             click: known bad-input errors -> one line, exit status 1
    init_distributed(timeout_s) -> Dist(rank, world_size, local_rank)
    read_ds_config(path, world_size) -> dict;  default_ds_config(recipe, cpu_name) -> Path
    param_groups(model, weight_decay, layer_decay=None) -> list[dict]
    lr_at(step, base_lr, warmup_steps, total_steps, min_lr=0.0) -> float
    start_run(stage, settings, options, model_signature) -> Run     (dist + config + run dir)
    fit(run, model, loaders: dict, step_fn, groups, figure_fn=None) -> summary dict
        step_fn(engine, batches: dict[name, batch]) -> StepOutput(loss, metrics, keys)
        figure_fn(module, batches, step) -> {name: PIL.Image}          rank 0 only
    checkpoint_tag_dir(path) -> Path      a run dir, its checkpoints/ or a tag dir -> the tag dir
    read_checkpoint_meta(path) -> dict    the posemae.json sidecar of that tag:
        {"stage", "model" (the signature the stage built), "step", "world_size", "epoch", "options"}
    model_inputs(engine, images), to_uint8(images), image_grid(rows), weights_digest(module)
    log_images(run, {name: PIL.Image}, step)   figures into TensorBoard (and W&B with --wandb)
    ConfigError, NonFiniteLossError, CheckpointWriteError, RankLostError
"""
from __future__ import annotations

import datetime
import functools
import json
import math
import os
import resource
import shutil
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import click
import numpy as np
import torch

from shards.device import configure_deepspeed_accelerator, cuda_available, ensure_distributed_env, free_port
from shards.files import atomic_write_json, atomic_write_text
from shards.progress import progress
from shards.schema import SampleError
from trainer.checkpoints import (CHECKPOINTS, LATEST, META_FILE, TAG_PREFIX, CheckpointError, check_loads_safely,
                                 latest_tag, tag_for)
from trainer.checkpoints import checkpoint_tag_dir, read_checkpoint_meta  # noqa: F401  (engine.* callers)

REPO_ROOT = Path(__file__).resolve().parents[1]
DS_CONFIG_DIR = REPO_ROOT / "ds_configs"
# Options that may change between a run and its --resume: they steer bookkeeping, not the maths.
# run_dir too: a run moved to a disk with room (after a full one) continues where it is now.
RESUMABLE_OPTIONS = {"resume", "max_steps", "log_every", "figure_every", "checkpoint_every", "keep_checkpoints",
                     "log_keys", "wandb", "run_dir", "skip_bad_samples", "dist_timeout"}


class ConfigError(ValueError):
    """A run that cannot start as configured (batch sizes, options, checkpoints)."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the message names the step and the batch's samples."""


class RankLostError(RuntimeError):
    """Another rank of the run died; the message says which checkpoint --resume continues from."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, quota, I/O error) on some rank; the message
    names the checkpoint, the error and the `latest` that is still intact."""


# -- settings and the click layer ------------------------------------------------------------
@dataclass
class TrainSettings:
    run_dir: Path
    ds_config: Path
    epochs: float
    warmup_epochs: float
    min_lr: float = 0.0
    seed: int = 0
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 10
    figure_every: int = 500
    resume: bool = False
    max_steps: int | None = None   # stop early (tests, benchmarks); the schedule still spans `epochs`
    log_keys: bool = False         # ranks/rank<r>-keys.jsonl: every micro-batch's sample keys
    wandb: bool = False            # also log to Weights & Biases (offline unless WANDB_MODE says otherwise)
    skip_bad_samples: bool = False  # leave out samples DALI cannot read (counted and logged) instead of stopping
    dist_timeout: float = 1800.0    # seconds a collective waits for the other ranks (torch's default)

    def __post_init__(self):
        for name in ("checkpoint_every", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if self.epochs <= 0 or self.warmup_epochs < 0 or self.figure_every < 0:
            raise ConfigError("--epochs must be positive, --warmup-epochs and --figure-every not negative")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError("--max-steps must be at least 1")
        if self.dist_timeout <= 0:
            raise ConfigError("--dist-timeout must be positive")


SETTING_NAMES = tuple(TrainSettings.__dataclass_fields__)


def training_options(epochs: float, warmup_epochs: float, checkpoint_every: int = 1000, figure_every: int = 500):
    """The options every training stage takes, with that stage's defaults."""
    opts = [
        click.option("--run-dir", type=click.Path(path_type=Path), default=None,
                     help="run directory (default runs/<stage>)"),
        click.option("--ds-config", type=click.Path(path_type=Path), default=None,
                     help="DeepSpeed JSON (default: the paper recipe with CUDA, the small fp32 CPU config without)"),
        click.option("--epochs", type=float, default=epochs, show_default=epochs is not None,
                     help=None if epochs is not None else "default: the paper's, for the data's joint order"),
        click.option("--warmup-epochs", type=float, default=warmup_epochs, show_default=True,
                     help="linear lr warm-up, then half-cycle cosine"),
        click.option("--min-lr", type=float, default=0.0, show_default=True, help="lr at the end of the cosine"),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--checkpoint-every", type=int, default=checkpoint_every, show_default=True,
                     help="optimizer steps between checkpoints (and one at the end)"),
        click.option("--keep-checkpoints", type=int, default=3, show_default=True, help="keep the last k"),
        click.option("--log-every", type=int, default=10, show_default=True, help="steps between metrics.jsonl lines"),
        click.option("--figure-every", type=int, default=figure_every, show_default=True,
                     help="steps between figures (and one at the end); 0 = none"),
        click.option("--resume", is_flag=True, help="continue from the run directory's latest checkpoint"),
        click.option("--max-steps", type=int, default=None, help="stop after this many optimizer steps "
                     "(the lr schedule still spans --epochs)"),
        click.option("--log-keys", is_flag=True, help="record every micro-batch's sample keys per rank "
                     "(ranks/rank<r>-keys.jsonl): which data each rank saw, in order"),
        click.option("--skip-bad-samples", is_flag=True, help="a sample the pipelines cannot read (corrupted "
                     "JPEG, truncated tar) is left out, counted and logged (ranks/rank<r>-bad-samples.jsonl) "
                     "instead of stopping the run with an error naming its shard and key"),
        click.option("--dist-timeout", type=float, default=1800.0, show_default=True, help="seconds a collective "
                     "waits for the other ranks before this rank stops with an error naming them: the bound on "
                     "a hang when a rank freezes or its node vanishes; above the longest checkpoint write"),
        click.option("--wandb", is_flag=True, help="also log scalars and figures to Weights & Biases: offline "
                     "into RUN_DIR/wandb unless WANDB_MODE=online (`wandb sync` uploads later)"),
    ]

    def decorate(f):
        for opt in reversed(opts):
            f = opt(f)
        return f
    return decorate


def settings_from_options(options: dict, stage: str, default_config: Path) -> TrainSettings:
    """Take the shared options out of a command's keyword arguments (the rest are the stage's)."""
    values = {name: options.pop(name) for name in SETTING_NAMES}
    values["run_dir"] = Path(values["run_dir"] or Path("runs") / stage)
    values["ds_config"] = Path(values["ds_config"] or default_config)
    return TrainSettings(**values)


def default_ds_config(recipe: str, cpu_name: str) -> Path:
    """The paper's recipe where CUDA is present, the small fp32 CPU config where it is not."""
    return DS_CONFIG_DIR / (recipe if cuda_available() else cpu_name)


def clear_errors(command):
    """Bad input (config, shards, checkpoints) ends the command with one clear line, no traceback."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (ConfigError, CheckpointError, SampleError, FileNotFoundError, FileExistsError, NonFiniteLossError,
                CheckpointWriteError, RankLostError) as e:
            raise click.ClickException(str(e)) from None
    return wrapper


# -- distributed ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(timeout_s: float = 1800.0) -> Dist:
    """Join the process group the launcher describes (or a world of one). Idempotent. A collective
    waits `timeout_s` for the other ranks, then raises (gloo: "Timed out waiting ...")."""
    own_world = ensure_distributed_env()
    configure_deepspeed_accelerator()   # a no-op after the `trainer` command's own call; here for library callers
    import deepspeed
    from deepspeed.accelerator import get_accelerator
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda_available():
        get_accelerator().set_device(local_rank)
    elif "OMP_NUM_THREADS" not in os.environ and int(os.environ.get("LOCAL_SIZE", 1)) > 1:
        # CPU ranks sharing a machine (LOCAL_SIZE from the deepspeed launcher): split its cores,
        # or their OpenMP threads spin against each other (tens of times slower).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["LOCAL_SIZE"])))
    for attempt in range(5):
        if torch.distributed.is_initialized():
            break
        try:
            deepspeed.init_distributed(dist_backend=get_accelerator().communication_backend_name(), verbose=False,
                                       timeout=datetime.timedelta(seconds=timeout_s))
        except torch.distributed.DistNetworkError as e:
            # A world of one picked a free port that another process took before the store bound it
            # (seen with training jobs started side by side): pick another. A launcher's port is its own.
            if not own_world or "EADDRINUSE" not in str(e) or attempt == 4:
                raise
            os.environ["MASTER_PORT"] = str(free_port())
    return Dist(torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank)


# -- the DeepSpeed config -------------------------------------------------------------------
def read_ds_config(path, world_size: int) -> dict:
    """Load a DeepSpeed JSON and make its batch sizes explicit and consistent:
    train_batch_size = train_micro_batch_size_per_gpu x gradient_accumulation_steps x world size.
    Any two determine the third; all three must multiply out."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"DeepSpeed config {path} not found")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"DeepSpeed config {path} is not valid JSON: {e}") from None
    total = config.get("train_batch_size")
    micro = config.get("train_micro_batch_size_per_gpu")
    accum = config.get("gradient_accumulation_steps")

    def need(condition, message):
        if not condition:
            raise ConfigError(f"{path}: {message} (train_batch_size = train_micro_batch_size_per_gpu x "
                              f"gradient_accumulation_steps x world size {world_size})")

    for name, value in (("train_batch_size", total), ("train_micro_batch_size_per_gpu", micro),
                        ("gradient_accumulation_steps", accum)):
        need(value is None or (isinstance(value, int) and value >= 1), f"{name} must be a positive integer, got {value!r}")
    if micro is None:
        need(total is not None and accum is not None, "give train_micro_batch_size_per_gpu, or "
             "train_batch_size with gradient_accumulation_steps")
        need(total % (accum * world_size) == 0, f"train_batch_size {total} is not divisible by "
             f"gradient_accumulation_steps {accum} x world size {world_size}")
        micro = total // (accum * world_size)
    elif accum is None:
        accum = 1 if total is None else total // (micro * world_size)
        need(total is None or total == micro * accum * world_size,
             f"train_batch_size {total} is not a multiple of micro-batch {micro} x world size {world_size}")
    total = micro * accum * world_size if total is None else total
    need(micro >= 1 and accum >= 1, f"train_batch_size {total} is smaller than micro-batch {micro} x world size "
         f"{world_size}")
    need(total == micro * accum * world_size, f"train_batch_size {total} != micro-batch {micro} x "
         f"gradient accumulation {accum} x world size {world_size} = {micro * accum * world_size}")
    config.update(train_batch_size=total, train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=accum)

    if "scheduler" in config:
        raise ConfigError(f"{path}: remove the 'scheduler' section: the lr schedule (warm-up + cosine, "
                          "per step) is set by the trainer from --epochs/--warmup-epochs/--min-lr")
    lr = config.get("optimizer", {}).get("params", {}).get("lr")
    if lr is None:
        raise ConfigError(f"{path}: optimizer.params.lr (the peak learning rate) is required")
    if config.get("fp16", {}).get("enabled"):
        # DeepSpeed's fp16 loss scaler skips overflowing steps, which our NaN check would stop on
        # and our step count would disagree with; the recipes use bf16.
        raise ConfigError(f"{path}: fp16 is not supported by these trainers; use bf16")
    if config.get("zero_optimization", {}).get("stage", 0) >= 3:
        raise ConfigError(f"{path}: ZeRO stage 3 is not supported (it partitions the weights the figures, "
                          "holdout metrics and checkpoint readers use whole); use stage 1 or 2")
    config.setdefault("steps_per_print", 10 ** 9)   # our own logs replace DeepSpeed's prints
    return config


def add_monitors(config: dict, run_dir: Path, wandb: bool = False) -> dict:
    """Point DeepSpeed's CSV monitor (and TensorBoard's, when installed) into the run dir; with
    `wandb`, DeepSpeed's W&B monitor too (log_images sends the figures to both)."""
    out = str(run_dir / "monitor")
    config["csv_monitor"] = {"enabled": True, "output_path": out, "job_name": "csv",
                             **{k: v for k, v in config.get("csv_monitor", {}).items() if k == "enabled"}}
    try:
        import tensorboard  # noqa: F401  (DeepSpeed's TensorBoard monitor needs it)
        config["tensorboard"] = {"enabled": True, "output_path": out, "job_name": "tensorboard"}
    except ImportError:
        config.pop("tensorboard", None)
    if wandb:
        # Offline by default: nothing leaves the machine unless the user asks (WANDB_MODE=online,
        # or `wandb sync RUN_DIR/wandb/offline-run-*` later).
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_DIR", str(run_dir))
        config["wandb"] = {"enabled": True, "project": os.environ.get("WANDB_PROJECT", "posemae"),
                           "group": run_dir.name}
    else:
        config.pop("wandb", None)
    return config


def log_images(run, images: dict, step: int) -> None:
    """Figures (PIL images) into TensorBoard beside DeepSpeed's scalars (same directory, same
    x-axis: samples seen) and, with --wandb, into W&B. Rank 0 calls it, as it makes the figures.
    A writer per call: figures are rare, and a killed run loses none that were written."""
    tb = run.ds_config.get("tensorboard", {})
    if tb.get("enabled"):
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(Path(tb["output_path"]) / tb["job_name"]))
        try:
            for name, image in images.items():
                writer.add_image(f"Figures/{name}", np.asarray(image.convert("RGB")), step, dataformats="HWC")
        finally:
            writer.close()
    if run.ds_config.get("wandb", {}).get("enabled"):
        import wandb
        if wandb.run is not None:   # DeepSpeed's W&B monitor started it on rank 0
            wandb.log({f"Figures/{name}": wandb.Image(image) for name, image in images.items()}, step=step)


# -- optimizer groups and the schedule ------------------------------------------------------
def no_weight_decay_names(model: torch.nn.Module) -> set[str]:
    """Full names of the parameters any submodule lists in its `no_weight_decay()`."""
    names = set()
    for prefix, module in model.named_modules():
        if hasattr(module, "no_weight_decay"):
            names |= {f"{prefix}.{n}" if prefix else n for n in module.no_weight_decay()}
    return names


def param_groups(model: torch.nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """AdamW groups: no decay on biases, 1-D parameters (norms) and `no_weight_decay()` names;
    with `layer_decay`, timm's per-layer groups whose `lr_scale` = layer_decay^(depth - layer)."""
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay
    skip = no_weight_decay_names(model)
    if layer_decay is not None:
        if not hasattr(model, "group_matcher"):
            raise ConfigError(f"layer-wise lr decay needs {type(model).__name__}.group_matcher()")
        # biases and norms are 1-D: timm leaves every 1-D tensor undecayed
        return param_groups_layer_decay(model, weight_decay, no_weight_decay_list=skip, layer_decay=layer_decay)
    return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)


def lr_at(step: float, base_lr: float, warmup_steps: float, total_steps: float, min_lr: float = 0.0) -> float:
    """MAE's schedule per step: linear warm-up from 0, then half-cycle cosine to min_lr."""
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    fraction = min(1.0, (step - warmup_steps) / max(1.0, total_steps - warmup_steps))
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * fraction))


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def seed_micro_step(seed: int, rank: int, micro_step: int) -> None:
    """Masking, drop path and every other torch randomness are a function of (seed, rank,
    micro-step), so a resumed run draws exactly what the uninterrupted one would have."""
    state = np.random.SeedSequence([seed, rank, micro_step]).generate_state(2, dtype=np.uint32)
    torch.manual_seed(int(state[0]) << 32 | int(state[1]))


# -- checkpoints ----------------------------------------------------------------------------
def prune_checkpoints(checkpoint_dir: Path, keep: int, current_step: int) -> None:
    """Keep the last `keep` checkpoints up to `current_step`; later ones are leftovers of a
    killed run that this run has now superseded."""
    tags = sorted((int(p.name[len(TAG_PREFIX):]), p) for p in checkpoint_dir.glob(f"{TAG_PREFIX}*")
                  if p.is_dir() and p.name[len(TAG_PREFIX):].isdigit())
    older = [p for step, p in tags if step <= current_step]
    stale = [p for step, p in tags if step > current_step]
    for p in older[:-keep] + stale if keep > 0 else stale:
        shutil.rmtree(p, ignore_errors=False)


# -- the run --------------------------------------------------------------------------------
@dataclass
class StepOutput:
    loss: torch.Tensor                        # scalar, what backward() runs on
    metrics: dict = field(default_factory=dict)   # name -> float/tensor, averaged over the step
    keys: list = field(default_factory=list)  # sample keys of the batch (named on a NaN)


@dataclass
class Run:
    stage: str
    settings: TrainSettings
    options: dict
    model_signature: dict
    dist: Dist
    ds_config: dict
    resume_tag: str | None = None

    @property
    def run_dir(self) -> Path:
        return self.settings.run_dir

    @property
    def checkpoint_dir(self) -> Path:
        return self.settings.run_dir / CHECKPOINTS

    @property
    def micro_batch(self) -> int:
        return self.ds_config["train_micro_batch_size_per_gpu"]

    @property
    def accumulation(self) -> int:
        return self.ds_config["gradient_accumulation_steps"]

    def log(self, record: dict) -> None:
        """Append one line to metrics.jsonl (rank 0)."""
        if self.dist.is_main:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"time": round(time.time(), 3), **record}, default=str) + "\n")


def _comparable(options: dict) -> dict:
    return {k: v for k, v in json.loads(json.dumps(options, default=str)).items() if k not in RESUMABLE_OPTIONS}


def start_run(stage: str, settings: TrainSettings, options: dict, model_signature: dict) -> Run:
    """Distributed start-up, the checked DeepSpeed config and the run directory. Fresh runs
    write config.json; --resume checks the checkpoint and the options against the run's own."""
    dist = init_distributed(settings.dist_timeout)
    ds_config = add_monitors(read_ds_config(settings.ds_config, dist.world_size), settings.run_dir, settings.wandb)
    all_options = {**options, **asdict(settings)}
    run = Run(stage, settings, all_options, model_signature, dist, ds_config)
    tag = latest_tag(run.checkpoint_dir)
    if tag is not None and not settings.resume:
        raise ConfigError(f"{run.checkpoint_dir} already holds checkpoints (latest {tag}): pass --resume "
                          "to continue that run, or choose another --run-dir")
    if tag is not None:
        meta_path = run.checkpoint_dir / tag / META_FILE
        if not meta_path.is_file():
            raise ConfigError(f"{meta_path} missing: {run.checkpoint_dir / tag} was not written by these trainers")
        meta = json.loads(meta_path.read_text())
        if meta["stage"] != stage or meta["model"] != model_signature:
            raise ConfigError(f"checkpoint {run.checkpoint_dir / tag} is a {meta['stage']} checkpoint of "
                              f"{meta['model']}; this run builds a {stage} model {model_signature}")
        if meta["world_size"] != dist.world_size:
            raise ConfigError(f"checkpoint {run.checkpoint_dir / tag} was written by {meta['world_size']} ranks; "
                              f"resume it with the same number (now {dist.world_size}): each rank's data "
                              "position is part of it")
        recorded = json.loads((settings.run_dir / "config.json").read_text())
        was, now = _comparable(recorded["options"]), _comparable(all_options)
        changed = sorted(k for k in set(was) | set(now) if was.get(k) != now.get(k))
        if changed:
            raise ConfigError(f"--resume of {settings.run_dir} with other options than the run's config.json: "
                              + ", ".join(f"{k}: {was.get(k)!r} -> {now.get(k)!r}" for k in changed))
        run.resume_tag = tag
    elif dist.is_main:
        from trainer.report import code_version
        settings.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("metrics.jsonl",):  # a fresh run in a directory without checkpoints
            (settings.run_dir / stale).unlink(missing_ok=True)
        atomic_write_json(settings.run_dir / "config.json", {
            "stage": stage, "options": all_options, "model": model_signature, "ds_config": ds_config,
            "world_size": dist.world_size, "code_version": code_version(REPO_ROOT),
            "command": sys.argv, "torch": torch.__version__, "deepspeed": _deepspeed_version(),
            "device": "cuda" if cuda_available() else "cpu"}, default=str)
    torch.distributed.barrier()
    return run


def _deepspeed_version() -> str:
    import deepspeed
    return deepspeed.__version__


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _reduce_mean(values: dict, device, world_size: int) -> dict:
    """Average logged metrics over ranks (every rank calls this at the same steps)."""
    if not values:
        return {}
    names = sorted(values)
    t = torch.tensor([float(values[n]) for n in names], dtype=torch.float64, device=device)
    if world_size > 1:
        torch.distributed.all_reduce(t)
        t /= world_size
    return dict(zip(names, t.tolist()))


def _sum_over_ranks(count: int, device, world_size: int) -> int:
    t = torch.tensor([count], dtype=torch.int64, device=device)
    if world_size > 1:
        torch.distributed.all_reduce(t)
    return int(t.item())


def fit(run: Run, model: torch.nn.Module, loaders: dict, step_fn: Callable, groups: list[dict],
        figure_fn: Callable | None = None) -> dict:
    """Train `model` for the run's schedule. The first loader sets the epoch (its len() is
    micro-batches per epoch per rank); the others are cycled alongside it. Returns a summary
    (steps, steps per second, peak RSS) that is also the last line of metrics.jsonl."""
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    if not cuda_available():
        torch.use_deterministic_algorithms(True)  # bit-identical resume on CPU
    _record_process(run)
    restore_sigterm = _stop_cleanly_on_sigterm(run)
    try:
        return _fit(run, model, loaders, step_fn, groups, figure_fn)
    except RuntimeError as e:
        # gloo/NCCL report a dead peer from inside whichever collective was waiting on it, or
        # time out (--dist-timeout) on one that hangs
        if run.dist.world_size > 1 and any(s in str(e) for s in LOST_PEER_MESSAGES):
            raise RankLostError(f"rank {run.dist.rank} lost contact with {_lost_ranks(run, wait_s=2.0)} of "
                                f"{run.run_dir} ({e}). {_resume_hint(run)}") from None
        raise
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
        _finish_wandb(run)
        restore_sigterm()


LOST_PEER_MESSAGES = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Timed out waiting",
                      "NCCL communicator was aborted")


def _process_file(run: Run, rank: int) -> Path:
    return run.run_dir / "ranks" / f"rank{rank:05d}-process.json"


def _record_process(run: Run) -> None:
    """Where this rank runs, so that the others can name it if it dies."""
    path = _process_file(run, run.dist.rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rank": run.dist.rank, "host": socket.gethostname(), "pid": os.getpid()}))


def _lost_ranks(run: Run, wait_s: float = 0.0) -> str:
    """The other ranks of this host that are gone (or frozen), e.g. "rank 1 (pid 4242, died)": the
    deepspeed launcher's own message names the wrong command. Ranks on other hosts cannot be
    checked from here; "another rank" when none is found. A killed process closes its sockets a
    moment before it shows as dead: `wait_s` gives it that moment."""
    deadline = time.monotonic() + wait_s
    while not (lost := _lost_ranks_now(run)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return ", ".join(lost) or "another rank (it died, hung or lost its node)"


def _lost_ranks_now(run: Run) -> list[str]:
    import psutil
    host, lost = socket.gethostname(), []
    for rank in range(run.dist.world_size):
        try:
            record = json.loads(_process_file(run, rank).read_text())
        except (OSError, ValueError):
            continue
        if rank == run.dist.rank or record["host"] != host:
            continue
        try:
            status = psutil.Process(record["pid"]).status()
        except psutil.Error:      # reaped by the launcher
            status = psutil.STATUS_DEAD
        if status in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            lost.append(f"rank {rank} (pid {record['pid']}, died)")
        elif status == psutil.STATUS_STOPPED:
            lost.append(f"rank {rank} (pid {record['pid']}, stopped)")
    return lost


def _resume_hint(run: Run) -> str:
    latest = latest_tag(run.checkpoint_dir)
    if latest is None:
        return "No checkpoint was written yet: start the run again"
    return f"The last complete checkpoint is {run.checkpoint_dir / latest}: continue with --resume"


def _stop_cleanly_on_sigterm(run: Run) -> Callable[[], None]:
    """SIGTERM is how the deepspeed launcher stops the other ranks when one dies (and how SLURM
    preempts): say so, on every rank, naming the dead rank and the checkpoint a --resume continues
    from, then exit at once. Exiting anywhere is safe, a checkpoint write included: `latest` names
    complete ones only. Returns the function that puts the previous handling back.

    A Python signal handler runs only once the main thread is back in the interpreter, and a rank
    waiting in a gloo collective for a peer that will never answer (frozen, or its sockets held
    open by a child process or a vanished node) stays in C++ until --dist-timeout (30 min by
    default): the launcher then SIGKILLs it after 30 s, silently. So the handler is doubled by a
    thread that reads the signal from Python's wakeup fd, which the C-level handler writes to at
    once, whatever the main thread is doing (the collectives release the GIL while they wait)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    stopping = threading.Lock()

    def stop():
        if not stopping.acquire(blocking=False):   # the thread and the handler both saw it
            return
        lost = _lost_ranks(run) if run.dist.world_size > 1 else ""
        why = (f"after {lost} " if lost and not lost.startswith("another") else "") + \
            "(the launcher stops every rank when one fails; a scheduler stops jobs it preempts)"
        sys.stderr.write(f"rank {run.dist.rank}: stopped by SIGTERM {why}. {_resume_hint(run)}\n")
        sys.stderr.flush()
        os._exit(128 + signal.SIGTERM)

    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    wakeup_before = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)

    def watch():
        while data := os.read(read_end, 64):   # b"" once the write end is closed
            if signal.SIGTERM in data:
                stop()
        os.close(read_end)
    threading.Thread(target=watch, name="sigterm-watch", daemon=True).start()
    handler_before = signal.signal(signal.SIGTERM, lambda signum, frame: stop())

    def restore():
        signal.signal(signal.SIGTERM, handler_before)
        signal.set_wakeup_fd(wakeup_before)
        os.close(write_end)
    return restore


def _finish_wandb(run: Run) -> None:
    """DeepSpeed's W&B monitor opens the run and never closes it: close it here, or the offline
    file can end before the logged records reach it (wandb writes from a service process)."""
    if run.ds_config.get("wandb", {}).get("enabled"):
        import wandb
        if wandb.run is not None:
            wandb.finish()


def _fit(run: Run, model: torch.nn.Module, loaders: dict, step_fn: Callable, groups: list[dict],
         figure_fn: Callable | None) -> dict:
    import deepspeed
    settings, dist = run.settings, run.dist
    engine, optimizer, _, _ = deepspeed.initialize(model=model, model_parameters=groups, config=run.ds_config)
    accumulation = run.accumulation
    primary = next(iter(loaders))
    micro_per_epoch = len(loaders[primary])
    steps_per_epoch = micro_per_epoch // accumulation
    if steps_per_epoch < 1:
        raise ConfigError(f"{primary} data gives {micro_per_epoch} micro-batches per rank per epoch, fewer than "
                          f"the {accumulation} accumulated per optimizer step: use fewer ranks or a smaller batch")
    total_steps = max(1, math.ceil(settings.epochs * steps_per_epoch))
    warmup_steps = settings.warmup_epochs * steps_per_epoch
    stop_step = min(total_steps, settings.max_steps) if settings.max_steps else total_steps
    base_lr = run.ds_config["optimizer"]["params"]["lr"]

    step = 0
    if run.resume_tag is not None:
        began = time.perf_counter()
        check_loads_safely(run.checkpoint_dir / run.resume_tag, dist.rank)
        path, _ = engine.load_checkpoint(str(run.checkpoint_dir), run.resume_tag, load_module_strict=True,
                                         load_optimizer_states=True, load_lr_scheduler_states=False)
        if path is None:
            raise ConfigError(f"DeepSpeed could not load {run.checkpoint_dir / run.resume_tag}")
        step = engine.global_steps
        positions = json.loads((run.checkpoint_dir / run.resume_tag / f"rank{dist.rank:05d}.json").read_text())
        for name, loader in loaders.items():
            loader.load_state_dict(positions["loaders"][name])
        run.log({"event": "resume", "step": step, "checkpoint": run.resume_tag, "command": sys.argv,
                 "load_seconds": round(time.perf_counter() - began, 3)})
    else:
        run.log({"event": "start", "total_steps": total_steps, "steps_per_epoch": steps_per_epoch,
                 "world_size": dist.world_size, "global_batch": run.ds_config["train_batch_size"]})
    if step >= stop_step:  # resumed a finished run: nothing to do
        return {"event": "end", "steps": step, "total_steps": total_steps, "steps_this_session": 0,
                "seconds": 0.0, "steps_per_s": 0.0, "peak_rss_mib": round(_peak_rss_mib(), 1)}

    ranks_dir = run.run_dir / "ranks"
    ranks_dir.mkdir(parents=True, exist_ok=True)
    for loader in loaders.values():
        if hasattr(loader, "skip_bad_samples"):
            loader.skip_bad_samples = settings.skip_bad_samples
    iterators = {name: iter(loader) for name, loader in loaders.items()}
    bad_samples = 0                 # left out by this rank, this session

    def next_batch(name):
        nonlocal bad_samples
        try:
            batch = next(iterators[name])
        except StopIteration:  # end of this loader's epoch: the next iter() starts the next one
            iterators[name] = iter(loaders[name])
            batch = next(iterators[name])
        skipped = loaders[name].drain_skipped() if hasattr(loaders[name], "drain_skipped") else []
        if skipped:
            bad_samples += len(skipped)
            with open(ranks_dir / f"rank{dist.rank:05d}-bad-samples.jsonl", "a") as f:
                for record in skipped:
                    f.write(json.dumps({"step": step + 1, "loader": name, **record}) + "\n")
                    print(f"rank {dist.rank}: left out bad sample {record['sample']} of {record['file']} at step "
                          f"{step + 1}: {record['error']} (--skip-bad-samples; {bad_samples} so far)", file=sys.stderr)
        return batch

    def save(at_step: int) -> None:
        tag = tag_for(at_step)
        tag_dir = run.checkpoint_dir / tag
        # A write that fails on one rank (disk full, quota, I/O error) must stop every rank with
        # the same message, not leave the others waiting in a collective: each rank takes part in
        # every collective below whatever failed on it.
        error = None
        try:
            tag_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(tag_dir / f"rank{dist.rank:05d}.json",
                              {"step": at_step, "loaders": {n: loader.state_dict() for n, loader in loaders.items()}},
                              default=str)
            if dist.is_main:
                atomic_write_json(tag_dir / META_FILE, {
                    "stage": run.stage, "model": run.model_signature, "step": at_step, "world_size": dist.world_size,
                    "epoch": at_step / steps_per_epoch, "options": run.options}, default=str)
        except OSError as e:
            error = e
        if not _any_rank(error is not None, engine.device, dist.world_size):
            try:
                engine.save_checkpoint(str(run.checkpoint_dir), tag=tag, save_latest=False)
            except (OSError, RuntimeError) as e:   # torch's zip writer reports ENOSPC as a RuntimeError
                error = e
                # DeepSpeed's save ends in a barrier that the ranks whose writes succeeded wait in
                torch.distributed.barrier()
            if error is None:
                try:   # on disk before `latest` names it: a lost node's page cache holds nothing we need
                    _fsync_dir(tag_dir)
                except OSError as e:
                    error = e
        failures = [None] * dist.world_size
        torch.distributed.all_gather_object(failures, None if error is None else f"rank {dist.rank}: {error}")
        if any(failures):
            _checkpoint_write_failed(run, tag, [f for f in failures if f])
        # `latest` moves only once every rank's files are complete (DeepSpeed's own write does not
        # wait for the other ranks), atomically: a kill at any moment leaves a loadable `latest`.
        if dist.is_main:
            atomic_write_text(run.checkpoint_dir / LATEST, tag)
            _fsync_dir(run.checkpoint_dir, files=False)
            prune_checkpoints(run.checkpoint_dir, settings.keep_checkpoints, at_step)
        torch.distributed.barrier()

    def figures(at_step: int, batches: dict) -> None:
        if figure_fn is None or not dist.is_main:
            return
        was_training = engine.module.training
        engine.module.eval()
        try:
            with torch.no_grad():
                images = figure_fn(engine.module, batches, at_step)
        finally:
            engine.module.train(was_training)
        (run.run_dir / "figures").mkdir(exist_ok=True)
        for name, image in images.items():
            image.save(run.run_dir / "figures" / f"{name}_step{at_step:08d}.png")
        log_images(run, images, engine.global_samples)

    keys_log = open(ranks_dir / f"rank{dist.rank:05d}-keys.jsonl", "a") if settings.log_keys else None
    bar = progress(total=stop_step, initial=step, unit="step", desc=run.stage, disable=not dist.is_main,
                   dynamic_ncols=True, mininterval=1.0)
    sums: dict[str, float] = {}
    count = 0
    began, first_step, samples = time.perf_counter(), step, 0
    bad = torch.zeros(1, device=engine.device)
    batches = {}
    while step < stop_step:
        set_lr(optimizer, lr_at(step, base_lr, warmup_steps, total_steps, settings.min_lr))
        for micro in range(accumulation):
            batches = {name: next_batch(name) for name in loaders}
            seed_micro_step(settings.seed, dist.rank, step * accumulation + micro)
            out = step_fn(engine, batches)
            if keys_log is not None:
                keys_log.write(json.dumps({"step": step + 1, "micro": micro, "keys": list(out.keys)}) + "\n")
            bad.fill_(0.0 if bool(torch.isfinite(out.loss.detach()).all()) else 1.0)
            if dist.world_size > 1:
                torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
            if bad.item():
                _stop_on_nonfinite(run, step, out, engine)
            engine.backward(out.loss)
            engine.step()
            for name, value in {"loss": out.loss, **out.metrics}.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach() if torch.is_tensor(value) else value)
            count += 1
        step += 1
        samples += run.ds_config["train_batch_size"]
        lr = optimizer.param_groups[0]["lr"] / optimizer.param_groups[0].get("lr_scale", 1.0)
        if step % settings.log_every == 0 or step == stop_step:
            means = _reduce_mean({k: v / count for k, v in sums.items()}, engine.device, dist.world_size)
            elapsed = time.perf_counter() - began
            record = {"step": step, "epoch": round(step / steps_per_epoch, 4), "lr": lr, **means,
                      "steps_per_s": (step - first_step) / elapsed, "samples_per_s": samples / elapsed}
            if settings.skip_bad_samples:   # all ranks, this session
                record["bad_samples"] = _sum_over_ranks(bad_samples, engine.device, dist.world_size)
            run.log(record)
            if dist.is_main:
                # DeepSpeed logs its own Train/Samples/lr (group 0's, layer-decay scaled): add the schedule's
                scalars = {**means, "schedule_lr": lr, "steps_per_s": record["steps_per_s"],
                           "samples_per_s": record["samples_per_s"]}
                engine.monitor.write_events([(f"Train/Samples/{k}", v, engine.global_samples) for k, v in scalars.items()])
                bar.set_postfix(loss=f"{means['loss']:.4g}", lr=f"{lr:.3g}")
            sums, count = {}, 0
        bar.update(1)
        if step % settings.checkpoint_every == 0 or step == stop_step:
            save(step)
        if settings.figure_every and (step % settings.figure_every == 0 or step == stop_step):
            figures(step, batches)
    bar.close()
    if keys_log is not None:
        keys_log.close()
    elapsed = time.perf_counter() - began
    summary = {"event": "end", "steps": step, "total_steps": total_steps, "steps_this_session": step - first_step,
               "seconds": round(elapsed, 3), "steps_per_s": (step - first_step) / elapsed,
               "peak_rss_mib": round(_peak_rss_mib(), 1)}
    if settings.skip_bad_samples:
        summary["bad_samples"] = _sum_over_ranks(bad_samples, engine.device, dist.world_size)
    run.log(summary)
    # Every rank's own account: its memory, and a digest of its parameters (data-parallel ranks
    # must end identical; BatchNorm running statistics are per rank, rank 0's are checkpointed).
    atomic_write_json(ranks_dir / f"rank{dist.rank:05d}.json",
                      {**summary, "rank": dist.rank, "parameters_sha256": weights_digest(engine.module)}, default=str)
    return summary


def _any_rank(flag: bool, device, world_size: int) -> bool:
    """True on every rank when `flag` is true on any."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    if world_size > 1:
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item())


def _fsync_dir(directory: Path, files: bool = True) -> None:
    """fsync a directory's files (those another rank wrote too: cheap when already flushed) and
    the directory itself, so renames into it survive a crash of the machine, not only of us."""
    if files:
        for path in directory.iterdir():
            if path.is_file():
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _checkpoint_write_failed(run: Run, tag: str, failures: list[str]) -> None:
    """Every rank gets here together. The incomplete tag directory goes (it may hold most of a
    checkpoint's bytes on the full disk); `latest` and every older checkpoint stay as they were."""
    latest = latest_tag(run.checkpoint_dir)
    free_mib = shutil.disk_usage(run.checkpoint_dir).free / 2**20   # before the removal frees some
    torch.distributed.barrier()
    if run.dist.is_main and tag != latest:
        shutil.rmtree(run.checkpoint_dir / tag, ignore_errors=True)
    torch.distributed.barrier()
    try:
        run.log({"event": "checkpoint_write_failed", "checkpoint": tag, "errors": failures, "latest": latest,
                 "free_mib": round(free_mib, 1)})
    except OSError:   # the same full disk: the error below says it all
        pass
    raise CheckpointWriteError(
        f"checkpoint {tag} could not be written to {run.checkpoint_dir}"
        + (": the filesystem is full" if free_mib < 1 else "") + f" ({'; '.join(failures)}; "
        f"{free_mib:.1f} MiB were free there). The incomplete {tag} was removed and nothing older was touched: "
        + (f"latest is still {latest}. Free some space, then continue with --resume"
           if latest else "there is no earlier checkpoint. Free some space, then start again"))


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 over the parameters' names and bytes (buffers left out)."""
    import hashlib
    h = hashlib.sha256()
    for name, tensor in module.named_parameters():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _stop_on_nonfinite(run: Run, step: int, out: StepOutput, engine) -> None:
    """Every rank gets here together; name the offending samples of every rank, save nothing."""
    loss = float(out.loss.detach().float().reshape(-1)[0])
    keys = [None] * run.dist.world_size
    torch.distributed.all_gather_object(keys, {"rank": run.dist.rank, "loss": loss, "keys": list(out.keys)})
    bad = [k for k in keys if not math.isfinite(k["loss"])]
    latest = latest_tag(run.checkpoint_dir)
    run.log({"event": "nonfinite_loss", "step": step + 1, "ranks": bad, "last_good_checkpoint": latest})
    raise NonFiniteLossError(
        f"non-finite loss at step {step + 1} of {run.run_dir}: "
        + "; ".join(f"rank {k['rank']} loss {k['loss']} on samples {k['keys']}" for k in bad)
        + f". Last good checkpoint: {run.checkpoint_dir / latest if latest else 'none'}")


# -- helpers for the stages' step and figure functions -----------------------------------------
def model_inputs(engine, images: torch.Tensor) -> torch.Tensor:
    """Images onto the engine's device in its parameters' dtype (bf16 engines hold bf16 weights)."""
    return images.to(engine.device, next(engine.module.parameters()).dtype, non_blocking=True)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Normalised (B, 3, H, W) images, as the pipelines make them, -> (B, H, W, 3) uint8 RGB."""
    from shards.pipelines.augment import IMAGENET_MEAN, IMAGENET_STD
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = images.detach().float().cpu() * std + mean
    return (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def image_grid(rows: list[list], gap: int = 2):
    """A PIL image of rows of equally sized tiles (HxWx3 uint8 arrays or PIL images)."""
    from PIL import Image
    tiles = [[np.asarray(t.convert("RGB") if isinstance(t, Image.Image) else t) for t in row] for row in rows]
    h, w = tiles[0][0].shape[:2]
    cols = max(len(r) for r in tiles)
    canvas = np.full((len(tiles) * (h + gap) - gap, cols * (w + gap) - gap, 3), 255, np.uint8)
    for i, row in enumerate(tiles):
        for j, tile in enumerate(row):
            canvas[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = tile
    return Image.fromarray(canvas)
