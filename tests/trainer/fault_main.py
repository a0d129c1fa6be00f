"""`python -m tests.trainer.fault_main FAULT STEP <trainer arguments>`: the `trainer` command
with one fault injected. Into DeepSpeed's write of checkpoint STEP's model-state file, where half
of the file's bytes reach the disk, then:
  kill     the process SIGKILLs itself: what kill -9, the OOM killer or a lost node leave behind;
  enospc   the write fails with ENOSPC, as on a full disk (for machines where the tests cannot
           mount a small tmpfs to fill for real).
Or into optimizer step STEP of a run started by the deepspeed launcher:
  kill-rank1  rank 1 SIGKILLs itself in the middle of the step (after its forward pass, before its
              backward's gradient all-reduce), while the other ranks compute or wait for it.
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
    # the deepspeed launcher puts --local_rank=N first; the trainer's command takes it
    launcher_args = [a for a in sys.argv[1:] if a.startswith("--local_rank=")]
    argv = [a for a in sys.argv[1:] if a not in launcher_args]
    fault, step, args = argv[0], int(argv[1]), launcher_args + argv[2:]
    assert fault in ("kill", "enospc", "kill-rank1"), fault
    if fault == "kill-rank1":
        from deepspeed.runtime.engine import DeepSpeedEngine
        backward = DeepSpeedEngine.backward

        def dying_backward(self, loss, *a, **kw):
            if int(os.environ.get("RANK", 0)) == 1 and self.global_steps == step - 1:
                os.kill(os.getpid(), signal.SIGKILL)
            return backward(self, loss, *a, **kw)
        DeepSpeedEngine.backward = dying_backward
        cli(args=args, prog_name="trainer")
        return
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
