"""Writing checkpoints: every rank's files complete and fsynced before `latest` moves, a failed
write on any rank stopping all of them, the last k kept."""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from shards.files import atomic_write_json, atomic_write_text
from trainer.checkpoints import LATEST, META_FILE, TAG_PREFIX, UNIVERSAL, check_loads_safely, latest_tag, tag_for
from trainer.errors import CheckpointWriteError, ConfigError

from .distributed import any_rank
from .run import Run


def prune_checkpoints(checkpoint_dir: Path, keep: int, current_step: int) -> None:
    """Keep the last `keep` checkpoints up to `current_step`; later ones are leftovers of a
    killed run that this run has now superseded. Universal copies (a resume on another world
    size) go too: `latest` is now this world size's own checkpoint, and a resume reads `latest`."""
    tags = sorted((int(p.name[len(TAG_PREFIX):]), p) for p in checkpoint_dir.glob(f"{TAG_PREFIX}*")
                  if p.is_dir() and p.name[len(TAG_PREFIX):].isdigit())
    older = [p for step, p in tags if step <= current_step]
    stale = [p for step, p in tags if step > current_step]
    for p in older[:-keep] + stale if keep > 0 else stale:
        shutil.rmtree(p, ignore_errors=False)
    universal = checkpoint_dir / UNIVERSAL      # tag directories and the converter's latest_universal
    if universal.is_dir():
        for copy in universal.glob(f"{TAG_PREFIX}*"):
            if copy.name != tag_for(current_step):
                shutil.rmtree(copy)
        if not any(universal.glob(f"{TAG_PREFIX}*")):
            shutil.rmtree(universal)


def fsync_dir(directory: Path, files: bool = True) -> None:
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


def checkpoint_write_failed(run: Run, tag: str, failures: list[str]) -> None:
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


def save_checkpoint(run: Run, engine, loaders: dict, at_step: int, steps_per_epoch: int) -> None:
    """Checkpoint `at_step` on every rank: DeepSpeed's state, the loaders' position (the global
    step and any samples left out: the same on every rank, each writes its own file), the
    posemae.json sidecar; then `latest` names it and the last --keep-checkpoints stay."""
    dist = run.dist
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
    if not any_rank(error is not None, engine.device, dist.world_size):
        try:
            engine.save_checkpoint(str(run.checkpoint_dir), tag=tag, save_latest=False)
        except (OSError, RuntimeError) as e:   # torch's zip writer reports ENOSPC as a RuntimeError
            error = e
            # DeepSpeed's save ends in a barrier that the ranks whose writes succeeded wait in
            torch.distributed.barrier()
        if error is None:
            try:   # on disk before `latest` names it: a lost node's page cache holds nothing we need
                fsync_dir(tag_dir)
            except OSError as e:
                error = e
    failures = [None] * dist.world_size
    torch.distributed.all_gather_object(failures, None if error is None else f"rank {dist.rank}: {error}")
    if any(failures):
        checkpoint_write_failed(run, tag, [f for f in failures if f])
    # `latest` moves only once every rank's files are complete (DeepSpeed's own write does not
    # wait for the other ranks), atomically: a kill at any moment leaves a loadable `latest`.
    if dist.is_main:
        atomic_write_text(run.checkpoint_dir / LATEST, tag)
        fsync_dir(run.checkpoint_dir, files=False)
        prune_checkpoints(run.checkpoint_dir, run.settings.keep_checkpoints, at_step)
    torch.distributed.barrier()


def load_checkpoint(run: Run, engine, loaders: dict) -> int:
    """--resume: DeepSpeed's state (model, optimizer, step) and every loader's position from the
    run's latest checkpoint; returns the step it continues from."""
    began = time.perf_counter()
    tag_dir = run.checkpoint_dir / run.resume_tag
    check_loads_safely(tag_dir, run.dist.rank)
    path, _ = engine.load_checkpoint(str(run.load_dir or run.checkpoint_dir), run.resume_tag, load_module_strict=True,
                                     load_optimizer_states=True, load_lr_scheduler_states=False)
    if path is None:
        raise ConfigError(f"DeepSpeed could not load {tag_dir}")
    step = engine.global_steps
    # Every rank's loaders are at the same global step (the data position), so rank 0's file
    # serves any rank of any world size.
    positions = json.loads((tag_dir / f"rank{0:05d}.json").read_text())
    for name, loader in loaders.items():
        loader.load_state_dict(positions["loaders"][name])
    run.log({"event": "resume", "step": step, "checkpoint": run.resume_tag, "command": sys.argv,
             "world_size": run.dist.world_size, "checkpoint_world_size": run.resumed_world_size,
             "global_batch": run.global_batch, "gradient_accumulation_steps": run.accumulation,
             "universal_checkpoint": None if run.load_dir is None else str(run.load_dir / run.resume_tag),
             "load_seconds": round(time.perf_counter() - began, 3)})
    return step
