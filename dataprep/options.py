"""The click layer the dataset commands share: option bundles, comma lists, and the conversion
driver's and the SMPL mesh's errors turned into click's."""
from __future__ import annotations

import contextlib
from pathlib import Path

import click

from shards.schema import SampleError

from .common import DEFAULT_CONTEXT, DEFAULT_CROP_SIZE
from .smpl import MeshJoints, mesh_from_options


def comma_list(text: str | None) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c']: the value of a comma-list option."""
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def checked_splits(text: str | None, known) -> list[str]:
    """The --splits option as a list, each one of `known` (click.BadParameter otherwise)."""
    splits = comma_list(text)
    for split in splits:
        if split not in known:
            raise click.BadParameter(f"unknown split {split!r}", param_hint="--splits")
    return splits


@contextlib.contextmanager
def bad_parameter(param_hint: str | None):
    """A ValueError the library raises for an option's value becomes click's usage error naming
    that option (`param_hint`; None names no option)."""
    try:
        yield
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint=param_hint) from None


def echo_warning(message: str) -> None:
    """The `warn` the commands hand to the convert functions: one line on stderr."""
    click.echo(message, err=True)


def conversion_options(f):
    """Options shared by every dataset command."""
    opts = [
        click.option("--workers", type=int, default=1, show_default=True, help="parallel conversion processes"),
        click.option("--limit", type=int, default=None, help="convert only the first N items of each split (after shuffling)"),
        click.option("--skip-bad", is_flag=True, help="skip bad samples instead of stopping: counted by reason in manifest.json, each listed in skipped.jsonl"),
        click.option("--crop-size", type=int, default=DEFAULT_CROP_SIZE, show_default=True, help="stored crop side in pixels"),
        click.option("--context", type=float, default=DEFAULT_CONTEXT, show_default=True, help="crop side / joint bounding-box side"),
        click.option("--shard-count", type=int, default=2000, show_default=True, help="max samples per shard"),
        click.option("--shard-mb", type=int, default=512, show_default=True, help="max MiB per shard"),
        click.option("--jpeg-quality", type=int, default=95, show_default=True),
        click.option("--shuffle-seed", type=int, default=0, show_default=True, help="order of samples in the shards"),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def driver_kwargs(workers, limit, skip_bad, shard_count, shard_mb, jpeg_quality, shuffle_seed) -> dict:
    return dict(workers=workers, limit=limit, skip_bad=skip_bad, shard_count=shard_count,
                shard_bytes=shard_mb << 20, jpeg_quality=jpeg_quality, shuffle_seed=shuffle_seed)


def mesh_options(f):
    """Click options of the SMPL mesh + H36M regressor mapping (3DPW, SURREAL)."""
    opts = [
        click.option("--smpl-models", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
                     help="folder with SMPL_{MALE,FEMALE,NEUTRAL}.npz (user-supplied, licensed) for the mesh regressor mapping"),
        click.option("--h36m-regressor", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                     help="(17, 6890) H36M joint regressor .npy (e.g. SPIN's J_regressor_h36m.npy) applied to the SMPL mesh"),
        click.option("--regressor-order", type=click.Choice(["spin", "h36m17"]), default="spin", show_default=True,
                     help="row order of the regressor: spin = left leg first (SPIN/HMR/VIBE), h36m17 = ours"),
        click.option("--smpl-gender", type=click.Choice(["gendered", "neutral"]), default="gendered", show_default=True,
                     help="mesh option: each body's gendered model (the datasets' ground truth) or the neutral one"),
        click.option("--max-fit-mm", type=float, default=25.0, show_default=True,
                     help="mesh option: largest allowed distance between the posed model's joints and the dataset's"),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def mesh_from_click_options(smpl_models, h36m_regressor, regressor_order, smpl_gender, max_fit_mm) -> MeshJoints | None:
    """smpl.mesh_from_options with its errors as click's: a usage error for options that do not go
    together, one line (exit status 1) for model files that cannot be used."""
    try:
        return mesh_from_options(smpl_models, h36m_regressor, regressor_order, smpl_gender, max_fit_mm)
    except SampleError as e:
        raise click.ClickException(str(e)) from None
    except ValueError as e:
        raise click.UsageError(str(e)) from None
