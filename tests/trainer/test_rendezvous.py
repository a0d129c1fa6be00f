"""A plain single-process run picks a free port for its rendezvous; another process can take that
port before the store binds it (two training jobs started side by side did). init_distributed then
retries with a new port instead of failing."""
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import socket
import shards.device as device
import trainer.engine as engine
import trainer.engine.distributed as distributed
busy = socket.socket()
busy.bind(("127.0.0.1", 0))
busy.listen()
taken = busy.getsockname()[1]
ports = iter([taken])
real = device.free_port
device.free_port = lambda: next(ports, None) or real()     # the first pick is a port in use
distributed.free_port = device.free_port
dist = engine.init_distributed()
import os, torch
print("world", dist.world_size, "retried", os.environ["MASTER_PORT"] != str(taken), torch.distributed.is_initialized())
"""


def test_world_of_one_retries_a_port_taken_meanwhile():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    env.update(DS_ACCELERATOR="cpu", POSEMAE_FORCE_CPU="1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "world 1 retried True True" in proc.stdout
