"""Models, losses, metrics and the DeepSpeed stages (segnet, masks, pretrain, finetune, evaluate).

Importing the package does nothing else. DeepSpeed chooses its accelerator once, when it is first
imported: the entry points (the `trainer` command, the benchmarks, the tests' conftest) call
shards.device.configure_deepspeed_accelerator() before anything imports deepspeed."""
