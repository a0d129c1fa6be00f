"""The DeepSpeed JSON: batch sizes made explicit and consistent, the recipe chosen for the
machine, and DeepSpeed's monitors pointed into the run directory."""
from __future__ import annotations

import json
import os
from pathlib import Path

import ds_configs
from shards.device import cuda_available
from trainer.errors import ConfigError


REPO_ROOT = Path(__file__).resolve().parents[2]
DS_CONFIG_DIR = Path(ds_configs.__file__).resolve().parent     # the shipped recipes, in a wheel too


def default_ds_config(recipe: str, cpu_name: str) -> Path:
    """The paper's recipe where CUDA is present, the small fp32 CPU config where it is not."""
    return DS_CONFIG_DIR / (recipe if cuda_available() else cpu_name)


def read_ds_config(path, world_size: int, global_batch: int | None = None) -> dict:
    """Load a DeepSpeed JSON and make its batch sizes explicit and consistent:
    train_batch_size = train_micro_batch_size_per_gpu x gradient_accumulation_steps x world size.
    Any two determine the third; all three must multiply out.

    `global_batch` (a --resume: the run's recorded train_batch_size) fixes train_batch_size; the
    JSON's micro-batch stays and gradient_accumulation_steps is re-derived for this world size,
    so a run resumed on another number of ranks keeps its global batch."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"DeepSpeed config {path} not found")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"DeepSpeed config {path} is not valid JSON: {e}") from None
    if global_batch is not None:
        micro = config.get("train_micro_batch_size_per_gpu") or config.get("train_batch_size", global_batch) // (
            world_size * config.get("gradient_accumulation_steps", 1))
        if not isinstance(micro, int) or micro < 1 or global_batch % (world_size * micro):
            per_rank = global_batch // world_size if global_batch % world_size == 0 else None
            divisors = [d for d in range(1, (per_rank or 0) + 1) if per_rank % d == 0] if per_rank else []
            raise ConfigError(
                f"{path}: the run's global batch {global_batch} does not split into {world_size} ranks x micro-batch "
                f"{micro} x a whole number of accumulation steps; "
                + (f"set train_micro_batch_size_per_gpu in {path} to a divisor of {per_rank} "
                   f"(e.g. {max(d for d in divisors if d <= micro) if any(d <= micro for d in divisors) else 1})"
                   if per_rank else f"resume on a number of ranks that divides {global_batch}"))
        config = {k: v for k, v in config.items() if k != "gradient_accumulation_steps"}
        config.update(train_batch_size=global_batch, train_micro_batch_size_per_gpu=micro)
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
