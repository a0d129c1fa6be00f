"""`trainer`: the stages of the method as click commands. Each also runs on every rank with
`deepspeed --module trainer <command> ...`. Each stage module defines its own command."""
import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """Train and evaluate posemae models with DeepSpeed over DALI shard pipelines.

    On a machine without CUDA everything runs on the CPU (DS_ACCELERATOR=cpu, DALI CPU mode,
    fp32 configs); with CUDA the same commands use GPUs, NCCL and bf16."""


if __name__ == "__main__":
    cli()
