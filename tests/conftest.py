import os

# Tests run the CPU paths on every machine: DALI device_id=None, DeepSpeed's CPU accelerator.
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("POSEMAE_FORCE_CPU", "1")
