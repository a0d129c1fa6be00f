"""CPU/GPU selection, made once from what the machine has. No flag to forget: CUDA present ->
DALI GPU ops and `mixed` decoding, NCCL, bf16; absent -> DALI CPU mode (`device_id=None`),
DS_ACCELERATOR=cpu with gloo, fp32."""
from __future__ import annotations

import os
import sys


def cuda_available() -> bool:
    if os.environ.get("POSEMAE_FORCE_CPU") == "1":
        return False
    import torch
    return torch.cuda.is_available()


CPU_IMAGE_OPS = ("opencv", "dali")


def cpu_image_ops() -> str:
    """Which operators resample and blend images in the CPU input pipelines, from
    POSEMAE_CPU_IMAGE_OPS: 'opencv' (default) calls OpenCV's warp and a uint8 blend from the
    DALI graph, about 2x the whole pipeline's speed on CPU; 'dali' uses DALI's own operators
    only, the very graph GPU machines run (no Python callback in the pipeline)."""
    value = os.environ.get("POSEMAE_CPU_IMAGE_OPS", "opencv")
    if value not in CPU_IMAGE_OPS:
        raise ValueError(f"POSEMAE_CPU_IMAGE_OPS must be one of {', '.join(CPU_IMAGE_OPS)}, got {value!r}")
    return value


def dali_device_id(local_rank: int = 0):
    """DALI's device_id: the local GPU, or None for CPU-only pipelines (not -1)."""
    return local_rank if cuda_available() else None


def configure_deepspeed_accelerator() -> str:
    """Set DS_ACCELERATOR before deepspeed is imported (it reads it once at import)."""
    # DeepSpeed JIT-builds an op with whichever `ninja` is first on PATH; a venv's ninja and the
    # system's invalidate each other's cached build (a 30 s rebuild on every start). Always use
    # the one installed next to this interpreter, however the process was started.
    bindir = os.path.dirname(sys.executable)
    path = os.environ.get("PATH", "").split(os.pathsep)
    if os.path.exists(os.path.join(bindir, "ninja")) and path[:1] != [bindir]:
        os.environ["PATH"] = os.pathsep.join([bindir] + [p for p in path if p != bindir])
    if "DS_ACCELERATOR" not in os.environ:
        os.environ["DS_ACCELERATOR"] = "cuda" if cuda_available() else "cpu"
    return os.environ["DS_ACCELERATOR"]


def ensure_distributed_env() -> bool:
    """A plain `python -m trainer ...` (no launcher) is a world of one: give torch.distributed
    the variables the deepspeed launcher would have set, so DeepSpeed does not go looking for
    MPI. Launched runs already have them and are left alone. True when this made the world."""
    launched = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID", "MV2_COMM_WORLD_RANK")
    if any(name in os.environ for name in launched):
        return False   # a launcher (deepspeed, mpirun, srun) set up the world; DeepSpeed discovers it
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    return True


def free_port() -> int:
    """A port free now, so concurrent single-process runs don't collide. Another process can
    still take it before the rendezvous binds it: init_distributed retries with a new one."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
