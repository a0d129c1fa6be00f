"""Run by tests/test_foundation.py through the `deepspeed` launcher: each rank trains the same
model on different data; DeepSpeed all-reduces gradients, so all ranks must end identical."""
import json
import sys

from shards.device import configure_deepspeed_accelerator

configure_deepspeed_accelerator()   # run as a script: before deepspeed is imported (it reads DS_ACCELERATOR once)
import deepspeed
import torch

out = sys.argv[-1]   # the launcher inserts --local_rank=N before our arguments
deepspeed.init_distributed()
rank = torch.distributed.get_rank()
from trainer.engine.distributed import unlink_shm_allreduce_buffer  # noqa: E402  (after the accelerator is set)
unlink_shm_allreduce_buffer(rank, torch.distributed.get_world_size())   # or /dev/shm keeps it
torch.manual_seed(0)
model = torch.nn.Linear(8, 2)
config = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
          "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}},
          "zero_optimization": {"stage": 1}, "gradient_clipping": 1.0}
engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
g = torch.Generator().manual_seed(100 + rank)   # different data on each rank
for _ in range(3):
    x = torch.randn(4, 8, generator=g)
    loss = engine(x).pow(2).mean()
    engine.backward(loss)
    engine.step()
weights = torch.cat([p.detach().flatten() for p in engine.module.parameters()]).tolist()
with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump({"rank": rank, "world": torch.distributed.get_world_size(), "weights": weights}, f)
