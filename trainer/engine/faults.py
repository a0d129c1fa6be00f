"""When a rank fails: a dead or frozen peer named from its process record, SIGTERM from the
launcher or a scheduler, a non-finite loss. Every rank stops with one message naming the cause
and the checkpoint --resume continues from."""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import torch

from trainer.checkpoints import latest_tag
from trainer.errors import NonFiniteLossError

from .run import Run, StepOutput, resume_hint


LOST_PEER_MESSAGES = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Timed out waiting",
                      "NCCL communicator was aborted")


def _process_file(run: Run, rank: int) -> Path:
    return run.run_dir / "ranks" / f"rank{rank:05d}-process.json"


def record_process(run: Run) -> None:
    """Where this rank runs, so that the others can name it if it dies."""
    path = _process_file(run, run.dist.rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rank": run.dist.rank, "host": socket.gethostname(), "pid": os.getpid()}))


def lost_ranks(run: Run, wait_s: float = 0.0) -> str:
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


def stop_cleanly_on_sigterm(run: Run) -> Callable[[], None]:
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
        lost = lost_ranks(run) if run.dist.world_size > 1 else ""
        why = (f"after {lost} " if lost and not lost.startswith("another") else "") + \
            "(the launcher stops every rank when one fails; a scheduler stops jobs it preempts)"
        sys.stderr.write(f"rank {run.dist.rank}: stopped by SIGTERM {why}. {resume_hint(run)}\n")
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


def stop_on_nonfinite(run: Run, step: int, out: StepOutput, engine) -> None:
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
