"""`dataprep demo`: write the synthetic demo data sets (dataprep.synthetic) in the FreiHAND, RHD
and ImageNet-validation layouts, so the whole method runs with no dataset downloaded."""
from __future__ import annotations

import time
from pathlib import Path

import click

from .synthetic import contact_sheet, generate_demo


@click.command("demo")
@click.argument("out_root", type=click.Path(file_okay=False, path_type=Path))
@click.option("--source-size", type=int, default=1000, show_default=True, help="FreiHAND training annotations (4 image versions each)")
@click.option("--source-test", type=int, default=None, help="FreiHAND evaluation images [default: source-size // 8]")
@click.option("--target-train", type=int, default=1000, show_default=True, help="RHD training ids")
@click.option("--target-test", type=int, default=250, show_default=True, help="RHD evaluation ids")
@click.option("--image-size", type=(int, int), default=(224, 320), show_default=True, help="image side of the source (FreiHAND) and target (RHD) sets")
@click.option("--backgrounds", type=int, default=64, show_default=True, help="ImageNet-layout background photographs")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=int, default=None, help="processes [default: the CPUs available]")
@click.option("--sheet", type=click.Path(dir_okay=False, path_type=Path), default=None, help="also write a contact sheet PNG here")
def cli(out_root, source_size, source_test, target_train, target_test, image_size, backgrounds, seed, workers, sheet):
    """Generate demo data: OUT_ROOT/FreiHAND_pub_v2 (labelled source, FreiHAND layout),
    OUT_ROOT/RHD_published_v2 (target, RHD layout, left and right hands) and
    OUT_ROOT/ILSVRC2012_val (bundled photographs as backgrounds).

    Hands are rendered from 3D skeletons, so joints, intrinsics and masks are exact; the two
    domains differ in skin, lighting, backgrounds, hand shape, pose, camera and image noise."""
    if seed < 0:
        raise click.BadParameter("must be >= 0", param_hint="--seed")
    start = time.time()
    try:
        paths = generate_demo(out_root, source_size, target_train, target_test, seed, image_size,
                              source_test=source_test, backgrounds=backgrounds, workers=workers)
    except ValueError as e:
        raise click.ClickException(str(e))
    click.echo(f"source {paths.source}\ntarget {paths.target}\nbackgrounds {paths.backgrounds}\n"
               f"done in {time.time() - start:.1f} s")
    if sheet:
        click.echo(f"contact sheet {contact_sheet(paths, sheet)}")
