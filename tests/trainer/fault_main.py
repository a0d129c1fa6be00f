"""`python -m tests.trainer.fault_main FAULT STEP <trainer arguments>`: the `trainer` command
with one fault injected into DeepSpeed's write of checkpoint STEP's model-state file. Half of the
file's bytes reach the disk, then:
  kill     the process SIGKILLs itself: what kill -9, the OOM killer or a lost node leave behind;
  enospc   the write fails with ENOSPC, as on a full disk (for machines where the tests cannot
           mount a small tmpfs to fill for real).
The rest of the process is the real trainer."""
import errno
import io
import os
import signal
import sys

import torch

from shards.device import configure_deepspeed_accelerator

configure_deepspeed_accelerator()   # run as a script: before deepspeed is imported (it reads DS_ACCELERATOR once)
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
from trainer.cli import cli


def main():
    fault, step, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    assert fault in ("kill", "enospc"), fault
    tag = f"step{step:08d}"
    original = TorchCheckpointEngine.save

    def save(self, state_dict, path):
        if tag not in str(path) or "model_states" not in str(path):
            return original(self, state_dict, path)
        buffer = io.BytesIO()
        torch.save(state_dict, buffer)
        data = buffer.getvalue()
        with open(path, "wb") as f:
            f.write(data[:len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
        if fault == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    TorchCheckpointEngine.save = save
    cli(args=args, prog_name="trainer")


if __name__ == "__main__":
    main()
