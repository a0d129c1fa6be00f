"""`trainer`: the stages of the method as click commands. Each also runs on every rank with
`deepspeed --module trainer <command> ...`. Each stage module defines its own command."""
import click

from shards.device import configure_deepspeed_accelerator


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
# The deepspeed launcher inserts --local_rank=N before the command's own arguments (it also sets
# LOCAL_RANK in the environment, which the stages read): accept it here and ignore it.
@click.option("--local_rank", "--local-rank", "local_rank", type=int, default=None, hidden=True)
def cli(local_rank):
    """Train and evaluate posemae models with DeepSpeed over DALI shard pipelines.

    On a machine without CUDA everything runs on the CPU (DS_ACCELERATOR=cpu, DALI CPU mode,
    fp32 configs); with CUDA the same commands use GPUs, NCCL and bf16."""
    # Before any stage imports deepspeed, which reads DS_ACCELERATOR once, at import.
    configure_deepspeed_accelerator()


from trainer import finetune, masks, pretrain, segnet  # noqa: E402  (stage commands)
cli.add_command(segnet.cli)
cli.add_command(masks.cli)
cli.add_command(pretrain.cli)
cli.add_command(finetune.cli)
from trainer import evaluate as evaluate_stage  # noqa: E402
cli.add_command(evaluate_stage.cli)
from trainer import demo  # noqa: E402
cli.add_command(demo.cli)
from trainer import export  # noqa: E402
cli.add_command(export.cli)
from trainer import predict  # noqa: E402
cli.add_command(predict.cli)

if __name__ == "__main__":
    cli()
