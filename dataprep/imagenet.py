"""ImageNet ILSVRC2012 validation images -> background shards (images only, no labels, no joints).

<root>/ILSVRC2012_val_%08d.JPEG             the released flat folder (50,000 images), or
<root>/<wnid>/ILSVRC2012_val_%08d.JPEG      the per-class layout torchvision's tooling makes

Pre-training pastes these behind masked foregrounds (docs/method.md, background replacement), so all
that matters is a varied, reasonably sized RGB image. Choice: each image keeps its full field of
view, resized so its shorter side is `--crop-size` (default 288 = the 256 training input plus
room for a random crop); the pipeline takes its own random square from it. `--center-crop` stores
the centred square instead. Greyscale, CMYK and palette files are converted to RGB. Everything
goes to OUT_DIR/train/ (the only use is as training backgrounds).
"""
from __future__ import annotations

import functools
from pathlib import Path

import click
import numpy as np
from PIL import Image

from shards.schema import Sample, SampleError

from .common import DEFAULT_CONTEXT, DEFAULT_CROP_SIZE, ConversionError, convert_split
from .options import conversion_options, driver_kwargs

EXTENSIONS = (".jpeg", ".jpg", ".png")


def list_images(root: Path) -> tuple[list[str], str]:
    """Image paths relative to root, and the layout found ('flat' or 'wnid')."""
    def images_in(folder: Path) -> list[Path]:
        return [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS]

    flat = images_in(root)
    nested = [p for d in sorted(root.iterdir()) if d.is_dir() for p in images_in(d)]
    paths = sorted(str(p.relative_to(root)) for p in flat + nested)
    return paths, ("flat" if flat and not nested else "wnid" if nested and not flat else "mixed")


def resize_shorter_side(im: Image.Image, size: int, center_crop: bool) -> Image.Image:
    w, h = im.size
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    im = im.resize(new, Image.BICUBIC)
    if center_crop:
        left, top = (new[0] - size) // 2, (new[1] - size) // 2
        im = im.crop((left, top, left + size, top + size))
    return im


def make_samples(item, *, root: Path, size: int, center_crop: bool):
    rel = item
    path = root / rel
    key = "imagenet_" + "".join(c if c.isalnum() or c in "_-" else "_" for c in Path(rel).stem)
    try:
        with Image.open(path) as im:
            original_size, original_mode = im.size, im.mode
            # JPEG: decode at 1/2, 1/4 or 1/8 scale straight from the DCT when the target allows.
            im.draft(None, (max(1, original_size[0] * size // min(original_size)),
                            max(1, original_size[1] * size // min(original_size))))
            rgb = im.convert("RGB")
    except FileNotFoundError:
        raise SampleError("image file missing", file=str(path), sample=key) from None
    except Exception as e:   # PIL raises many types (OSError, SyntaxError, ...) for bad files
        raise SampleError(f"corrupt or unreadable image: {e}", file=str(path), sample=key) from None
    out = resize_shorter_side(rgb, size, center_crop)
    parent = Path(rel).parent.name
    yield Sample(
        key=key,
        image=np.asarray(out),
        meta={"dataset": "imagenet", "split": "train", "source": rel, "wnid": parent or None,
              "joint_order": "none", "root_index": None, "original_size": list(original_size),
              "original_mode": original_mode, "shorter_side": size, "center_crop": center_crop},
    )


def convert(src_root: Path, out_dir: Path, *, shorter_side: int = DEFAULT_CROP_SIZE, center_crop: bool = False,
            **driver) -> dict:
    """The ILSVRC2012 validation folder at `src_root` (flat or per-WNID) -> background shards in
    `out_dir` (the one split, train); returns the manifest. Each image is resized so its shorter
    side is `shorter_side` (and cut to the centred square with `center_crop`). `driver`:
    convert_split's options. ConversionError when there are no images."""
    items, layout = list_images(src_root)
    if not items:
        raise ConversionError(f"no images ({', '.join(EXTENSIONS)}) in {src_root} or its class folders")
    make = functools.partial(make_samples, root=src_root, size=shorter_side, center_crop=center_crop)
    return convert_split(items, make, out_dir, desc="imagenet/train",
                         manifest_extra={"dataset": "imagenet", "split": "train", "joint_order": "none",
                                         "layout": layout, "shorter_side": shorter_side, "center_crop": center_crop},
                         **driver)


@click.command("imagenet")
@click.argument("src_root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--center-crop", is_flag=True, help="store the centred square (crop-size x crop-size) instead of the full resized image")
@conversion_options
def cli(src_root, out_dir, center_crop, crop_size, context, **kw):
    """ILSVRC2012 validation folder (flat or per-WNID) -> OUT_DIR/train/ background images.

    --crop-size is the stored shorter side; images only (joint order 'none')."""
    if context != DEFAULT_CONTEXT:
        raise click.BadParameter("backgrounds are not cropped around joints", param_hint="--context")
    m = convert(src_root, out_dir / "train", shorter_side=crop_size, center_crop=center_crop, **driver_kwargs(**kw))
    click.echo(f"imagenet/train: {m['samples']} samples in {m['num_shards']} shards, {m['skipped']['count']} skipped")
