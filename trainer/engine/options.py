"""The settings every training stage shares (TrainSettings) and their click options: the click
layer of the engine."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import click

from shards.schema import SampleError
from trainer.checkpoints import CheckpointError
from trainer.errors import CheckpointWriteError, ConfigError, NonFiniteLossError, RankLostError


@dataclass
class TrainSettings:
    run_dir: Path
    ds_config: Path
    epochs: float
    warmup_epochs: float
    min_lr: float = 0.0
    seed: int = 0
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 10
    figure_every: int = 500
    resume: bool = False
    max_steps: int | None = None   # stop early (tests, benchmarks); the schedule still spans `epochs`
    log_keys: bool = False         # ranks/rank<r>-keys.jsonl: every micro-batch's sample keys
    wandb: bool = False            # also log to Weights & Biases (offline unless WANDB_MODE says otherwise)
    skip_bad_samples: bool = False  # leave out samples DALI cannot read (counted and logged) instead of stopping
    dist_timeout: float = 1800.0    # seconds a collective waits for the other ranks (torch's default)

    def __post_init__(self):
        for name in ("checkpoint_every", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if self.epochs <= 0 or self.warmup_epochs < 0 or self.figure_every < 0:
            raise ConfigError("--epochs must be positive, --warmup-epochs and --figure-every not negative")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError("--max-steps must be at least 1")
        if self.dist_timeout <= 0:
            raise ConfigError("--dist-timeout must be positive")


SETTING_NAMES = tuple(TrainSettings.__dataclass_fields__)


def training_options(epochs: float, warmup_epochs: float, checkpoint_every: int = 1000, figure_every: int = 500):
    """The options every training stage takes, with that stage's defaults."""
    opts = [
        click.option("--run-dir", type=click.Path(path_type=Path), default=None,
                     help="run directory (default runs/<stage>)"),
        click.option("--ds-config", type=click.Path(path_type=Path), default=None,
                     help="DeepSpeed JSON (default: the paper recipe with CUDA, the small fp32 CPU config without)"),
        click.option("--epochs", type=float, default=epochs, show_default=epochs is not None,
                     help=None if epochs is not None else "default: the paper's, for the data's joint order"),
        click.option("--warmup-epochs", type=float, default=warmup_epochs, show_default=True,
                     help="linear lr warm-up, then half-cycle cosine"),
        click.option("--min-lr", type=float, default=0.0, show_default=True, help="lr at the end of the cosine"),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--checkpoint-every", type=int, default=checkpoint_every, show_default=True,
                     help="optimizer steps between checkpoints (and one at the end)"),
        click.option("--keep-checkpoints", type=int, default=3, show_default=True, help="keep the last k"),
        click.option("--log-every", type=int, default=10, show_default=True, help="steps between metrics.jsonl lines"),
        click.option("--figure-every", type=int, default=figure_every, show_default=True,
                     help="steps between figures (and one at the end); 0 = none"),
        click.option("--resume", is_flag=True, help="continue from the run directory's latest checkpoint"),
        click.option("--max-steps", type=int, default=None, help="stop after this many optimizer steps "
                     "(the lr schedule still spans --epochs)"),
        click.option("--log-keys", is_flag=True, help="record every micro-batch's sample keys per rank "
                     "(ranks/rank<r>-keys.jsonl): which data each rank saw, in order"),
        click.option("--skip-bad-samples", is_flag=True, help="a sample the pipelines cannot read (corrupted "
                     "JPEG, truncated tar) is left out, counted and logged (ranks/rank<r>-bad-samples.jsonl) "
                     "instead of stopping the run with an error naming its shard and key"),
        click.option("--dist-timeout", type=float, default=1800.0, show_default=True, help="seconds a collective "
                     "waits for the other ranks before this rank stops with an error naming them: the bound on "
                     "a hang when a rank freezes or its node vanishes; above the longest checkpoint write"),
        click.option("--wandb", is_flag=True, help="also log scalars and figures to Weights & Biases: offline "
                     "into RUN_DIR/wandb unless WANDB_MODE=online (`wandb sync` uploads later)"),
    ]

    def decorate(f):
        for opt in reversed(opts):
            f = opt(f)
        return f
    return decorate


def settings_from_options(options: dict, stage: str, default_config: Path) -> TrainSettings:
    """Take the shared options out of a command's keyword arguments (the rest are the stage's)."""
    values = {name: options.pop(name) for name in SETTING_NAMES}
    values["run_dir"] = Path(values["run_dir"] or Path("runs") / stage)
    values["ds_config"] = Path(values["ds_config"] or default_config)
    return TrainSettings(**values)


def clear_errors(command):
    """Bad input (config, shards, checkpoints) ends the command with one clear line, no traceback."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (ConfigError, CheckpointError, SampleError, FileNotFoundError, FileExistsError, NonFiniteLossError,
                CheckpointWriteError, RankLostError) as e:
            raise click.ClickException(str(e)) from None
    return wrapper
