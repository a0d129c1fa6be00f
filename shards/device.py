"""CPU/GPU selection, made once from what the machine has. No flag to forget: CUDA present ->
DALI GPU ops and `mixed` decoding, NCCL, bf16; absent -> DALI CPU mode (`device_id=None`),
DS_ACCELERATOR=cpu with gloo, fp32."""
from __future__ import annotations

import os


def cuda_available() -> bool:
    if os.environ.get("POSEMAE_FORCE_CPU") == "1":
        return False
    import torch
    return torch.cuda.is_available()


def dali_device_id(local_rank: int = 0):
    """DALI's device_id: the local GPU, or None for CPU-only pipelines (not -1)."""
    return local_rank if cuda_available() else None


def configure_deepspeed_accelerator() -> str:
    """Set DS_ACCELERATOR before deepspeed is imported (it reads it once at import)."""
    if "DS_ACCELERATOR" not in os.environ:
        os.environ["DS_ACCELERATOR"] = "cuda" if cuda_available() else "cpu"
    return os.environ["DS_ACCELERATOR"]
