"""Models, losses, metrics and the DeepSpeed stages (segnet, masks, pretrain, finetune, evaluate)."""
from shards.device import configure_deepspeed_accelerator

# DeepSpeed picks its accelerator once, at import: choose it before anything imports deepspeed.
configure_deepspeed_accelerator()
