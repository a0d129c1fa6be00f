"""The trainer's domain errors. Library code raises them; the click layer
(trainer.engine.options.clear_errors) turns them into one line and exit status 1."""
from __future__ import annotations


class ConfigError(ValueError):
    """A run that cannot start as configured (batch sizes, options, checkpoints)."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked (unreadable, another model); the message names
    the file."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, quota, I/O error) on some rank; the message
    names the checkpoint, the error and the `latest` that is still intact."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the message names the step and the batch's samples."""


class RankLostError(RuntimeError):
    """Another rank of the run died; the message says which checkpoint --resume continues from."""
