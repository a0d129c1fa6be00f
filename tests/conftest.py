import os

# Tests run the CPU paths on every machine: DALI device_id=None, DeepSpeed's CPU accelerator.
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("POSEMAE_FORCE_CPU", "1")
from shards.device import configure_deepspeed_accelerator  # noqa: E402

# What the `trainer` command does at its start, for the tests that import deepspeed themselves.
configure_deepspeed_accelerator()
