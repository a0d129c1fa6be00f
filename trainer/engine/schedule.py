"""Optimizer parameter groups, the learning rate schedule (MAE's: linear warm-up, half-cycle
cosine, per step) and the per-micro-step seeds that make a resumed run draw what the
uninterrupted one would have."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from trainer.errors import ConfigError


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


def seed_micro_step(seed: int, first_position: int) -> None:
    """Masking, drop path and every other torch randomness are a function of (seed, the position
    of the micro-batch's first sample in the global order). A micro-batch holds the same samples
    whichever rank and accumulation step computes it (shards.order.BatchPlan deals them
    rank-major), so a run resumed on any world size draws exactly what the uninterrupted one would
    have, given the same micro-batch size."""
    state = np.random.SeedSequence([seed, first_position]).generate_state(2, dtype=np.uint32)
    torch.manual_seed(int(state[0]) << 32 | int(state[1]))


@dataclass(frozen=True)
class Schedule:
    """A run's length and learning rate, in optimizer steps."""
    steps_per_epoch: int
    total_steps: int          # what the lr schedule spans: --epochs
    warmup_steps: float
    stop_step: int            # where this run stops: --max-steps, else total_steps
    base_lr: float            # the DeepSpeed JSON's optimizer lr: the peak
    min_lr: float

    def lr(self, step: int) -> float:
        return lr_at(step, self.base_lr, self.warmup_steps, self.total_steps, self.min_lr)


def schedule_for(settings, ds_config: dict, loaders: dict) -> Schedule:
    """The first loader sets the epoch: its len() is micro-batches per epoch per rank."""
    accumulation = ds_config["gradient_accumulation_steps"]
    primary = next(iter(loaders))
    micro_per_epoch = len(loaders[primary])
    steps_per_epoch = micro_per_epoch // accumulation
    if steps_per_epoch < 1:
        raise ConfigError(f"{primary} data gives {micro_per_epoch} micro-batches per rank per epoch, fewer than "
                          f"the {accumulation} accumulated per optimizer step: use fewer ranks or a smaller batch")
    total_steps = max(1, math.ceil(settings.epochs * steps_per_epoch))
    stop_step = min(total_steps, settings.max_steps) if settings.max_steps else total_steps
    return Schedule(steps_per_epoch, total_steps, settings.warmup_epochs * steps_per_epoch, stop_step,
                    ds_config["optimizer"]["params"]["lr"], settings.min_lr)
