"""Checkpoint directories as the trainers write them, and reading them back.

    runs/<name>/checkpoints/latest            the tag of the newest complete checkpoint
    runs/<name>/checkpoints/step00001000/     one tag: DeepSpeed's files (MODEL_STATES, the
        optimizer's per-rank files), posemae.json (stage, model signature, step, world size,
        epoch, options) and rank<r>.json (the loaders' position: the global step, the same on
        every rank, and the samples left out)
    runs/<name>/checkpoints/universal/<tag>/  DeepSpeed's universal form of a ZeRO tag, written when
        a run is resumed on another world size, removed once that run saves its own checkpoint

Every reader accepts a run directory, its checkpoints/ directory or one tag directory.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from trainer.errors import CheckpointError

CHECKPOINTS = "checkpoints"
LATEST = "latest"
META_FILE = "posemae.json"          # per checkpoint: stage, model signature, step, world size
MODEL_STATES = "mp_rank_00_model_states.pt"   # DeepSpeed's file of the model weights
TAG_PREFIX = "step"
UNIVERSAL = "universal"            # checkpoints/universal/<tag>: a ZeRO tag re-partitionable over any world size


def tag_for(step: int) -> str:
    return f"{TAG_PREFIX}{step:08d}"


def latest_tag(checkpoint_dir) -> str | None:
    latest = Path(checkpoint_dir) / LATEST
    return latest.read_text().strip() if latest.is_file() else None


def checkpoint_tag_dir(path) -> Path:
    """A run directory, its checkpoints/ directory (-> `latest`) or one tag directory -> the tag dir."""
    path = Path(path)
    for candidate in (path / CHECKPOINTS, path):
        tag = latest_tag(candidate)
        if tag is not None:
            return candidate / tag
    if (path / META_FILE).is_file() or (path / MODEL_STATES).is_file():
        return path
    raise FileNotFoundError(f"no checkpoint at {path} (expected a run directory, its {CHECKPOINTS}/ "
                            f"directory with a '{LATEST}' file, or a checkpoint tag directory)")


def read_checkpoint_meta(path) -> dict:
    """The posemae.json sidecar of a checkpoint: {"stage", "model" (the signature the stage
    built), "step", "world_size", "epoch", "options"}."""
    tag_dir = checkpoint_tag_dir(path)
    meta = tag_dir / META_FILE
    if not meta.is_file():
        raise FileNotFoundError(f"{meta} missing: {tag_dir} is not a checkpoint written by these trainers")
    return json.loads(meta.read_text())


def deepspeed_plain_data() -> list:
    """DeepSpeed classes its ZeRO optimizer files pickle that hold plain data only (the loss
    scaler's numbers, the stage enum, a fragment's offsets): allowed for weights_only loading."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address
    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def check_loads_safely(tag_dir: Path, rank: int) -> None:
    """DeepSpeed unpickles its checkpoint files with weights_only=False: first make sure the files
    this rank will read hold nothing but tensors and plain data (weights_only=True loads them)."""
    for path in [tag_dir / MODEL_STATES, *tag_dir.glob(f"*zero_pp_rank_{rank}_mp_rank_*_optim_states.pt")]:
        try:
            with torch.serialization.safe_globals(deepspeed_plain_data()):
                torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # missing, truncated, or carrying arbitrary objects: say which file
            raise CheckpointError(f"checkpoint file {path} cannot be loaded safely: {e}") from None


def read_module_state_dict(checkpoint: str | os.PathLike) -> dict:
    """The model state dict of a checkpoint: a DeepSpeed checkpoint directory (its `latest` tag,
    or a tag directory) holding MODEL_STATES, or a .pt file with either a plain
    state dict or DeepSpeed's {"module": state dict}. Loaded with weights_only=True."""
    path = os.fspath(checkpoint)
    if os.path.isdir(path):
        tag = latest_tag(path)
        path = os.path.join(path, tag, MODEL_STATES) if tag is not None else os.path.join(path, MODEL_STATES)
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint file at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file or one that needs unsafe unpickling: say which file
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    if isinstance(state, dict) and "module" in state:
        state = state["module"]
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path} holds no model weights (a ZeRO-3 checkpoint? convert it with "
                              f"DeepSpeed's zero_to_fp32.py first)")
    if all(k.startswith("module.") for k in state):  # saved from a DDP/engine wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    return state
