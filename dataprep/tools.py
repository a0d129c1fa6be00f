"""`dataprep verify` and `dataprep inspect`: check and look at any shard set."""
from __future__ import annotations

import collections
import json
from pathlib import Path

import click
import numpy as np
from PIL import Image, ImageDraw

from shards.joints import BONES, JOINT_ORDERS
from shards.reader import check_manifest, iter_samples, read_manifest
from shards.schema import EXT_JOINTS3D, MANIFEST, SampleError, validate

from .common import skipped_count

# Lengths `dataprep inspect` reports: every drawn bone plus the spans that show skeleton
# definitions differing between datasets (hip width, pelvis to thorax, shoulder width).
SPANS = {
    "hand21": [(0, 17), (5, 17)],                                  # palm length to little MCP, palm width
    "h36m17": [(1, 4), (0, 8), (11, 14)],
}


def measured_pairs(order: str) -> list[tuple[int, int]]:
    return BONES.get(order, []) + SPANS.get(order, [])


def bone_lengths(d: Path, order: str, limit: int | None) -> dict:
    """Per bone/span: count, mean, std, min, 5th percentile, median, 95th percentile, max of the
    3D length in millimetres over the samples of one shard directory (the first `limit`)."""
    names = JOINT_ORDERS[order]
    pairs = measured_pairs(order)
    lengths = []
    for i, raw in enumerate(iter_samples(d, decode=False)):
        if limit and i >= limit:
            break
        data = raw.get(EXT_JOINTS3D)
        if data is None:
            continue                        # 2D-only sample
        j = np.frombuffer(data, "<f4").reshape(len(names), 3).astype(np.float64)
        lengths.append([np.linalg.norm(j[a] - j[b]) for a, b in pairs])
    if not lengths:
        return {}
    lengths = np.array(lengths)
    out = {}
    for k, (a, b) in enumerate(pairs):
        x = lengths[:, k]
        p5, p50, p95 = np.percentile(x, [5, 50, 95])
        out[f"{names[a]}-{names[b]}"] = {"n": len(x), "mean": round(float(x.mean()), 1), "std": round(float(x.std()), 1),
                                         "min": round(float(x.min()), 1), "p5": round(float(p5), 1),
                                         "median": round(float(p50), 1), "p95": round(float(p95), 1),
                                         "max": round(float(x.max()), 1)}
    return out


def bone_table(stats: dict) -> str:
    """The bone statistics as an aligned text table."""
    head = f"{'bone (mm)':<24}{'n':>8}{'mean':>9}{'std':>8}{'min':>9}{'p5':>9}{'median':>9}{'p95':>9}{'max':>9}"
    rows = [f"{name:<24}{v['n']:>8}{v['mean']:>9.1f}{v['std']:>8.1f}{v['min']:>9.1f}{v['p5']:>9.1f}"
            f"{v['median']:>9.1f}{v['p95']:>9.1f}{v['max']:>9.1f}" for name, v in stats.items()]
    return "\n".join([head] + rows)


def shard_dirs(path: Path) -> list[Path]:
    """A shard directory, or a conversion output holding one directory per split."""
    if (path / MANIFEST).exists() or list(path.glob("*.tar")):
        return [path]
    subs = sorted(p for p in path.iterdir() if p.is_dir() and ((p / MANIFEST).exists() or list(p.glob("*.tar"))))
    if not subs:
        raise FileNotFoundError(f"no shards under {path}")
    return subs


def verify_dir(d: Path) -> int:
    """Raise SampleError naming the first bad shard/key; return the number of samples."""
    manifest, _ = check_manifest(d)
    total = 0
    for rec in manifest["shards"]:
        path = d / rec["file"]
        idx = d / rec["index"]
        if not idx.exists():
            raise SampleError("DALI index missing", file=str(idx))
        header = idx.read_text().split("\n", 1)[0].split()
        if header[:1] != ["v1.2"] or int(header[1]) != rec["count"]:
            raise SampleError(f"index header {header} does not match count {rec['count']}", file=str(idx))
        n = 0
        for sample in iter_samples(path):
            try:
                validate(sample)
                if sample.meta.get("joint_order") != manifest.get("joint_order", sample.meta.get("joint_order")):
                    raise SampleError(f"joint order {sample.meta.get('joint_order')} != manifest's "
                                      f"{manifest.get('joint_order')}", sample=sample.key)
            except SampleError as e:
                raise SampleError(str(e), file=str(path)) from None
            n += 1
        if n != rec["count"]:
            raise SampleError(f"{n} samples read, manifest says {rec['count']}", file=str(path))
        total += n
    if total != manifest["samples"]:
        raise SampleError(f"{total} samples, manifest says {manifest['samples']}", file=str(d))
    return total


@click.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
def verify(path):
    """Re-read every shard under PATH: sha256, index, schema and value sanity.

    Exits non-zero naming the first bad shard and sample key."""
    for d in shard_dirs(path):
        try:
            n = verify_dir(d)
        except SampleError as e:
            raise click.ClickException(f"verify failed: {e}")
        click.echo(f"{d}: OK, {n} samples")


def draw_sample(sample, size: int = 192) -> Image.Image:
    img = Image.fromarray(sample.image).convert("RGB")
    if sample.mask is not None:   # tint the foreground so mask alignment is visible
        tint = np.asarray(img, np.float32)
        fg = sample.mask[..., None] > 127
        tint = np.where(fg, tint * 0.7 + np.array([0, 90, 0]) * 0.3, tint)
        img = Image.fromarray(tint.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    order = sample.meta.get("joint_order")
    if sample.joints2d_px is not None:
        uv, vis = sample.joints2d_px, sample.visible
        for a, b in BONES.get(order, []):
            if vis[a] and vis[b]:
                draw.line([tuple(uv[a]), tuple(uv[b])], fill=(255, 60, 60), width=2)
        for j, (u, v) in enumerate(uv):
            col = (255, 255, 0) if vis[j] else (120, 120, 120)
            draw.ellipse([u - 2, v - 2, u + 2, v + 2], fill=col)
    scale = size / max(img.size)
    img = img.resize((round(img.width * scale), round(img.height * scale)))
    ImageDraw.Draw(img).text((3, 3), sample.key[-24:], fill=(255, 255, 255))
    return img


@click.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--sheet", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="contact-sheet PNG (default PATH/contact_sheet.png)")
@click.option("--num", type=int, default=16, show_default=True, help="samples on the sheet")
@click.option("--bone-samples", type=int, default=20000, show_default=True,
              help="samples per split read for the bone-length statistics (0 = all)")
def inspect(path, sheet, num, bone_samples):
    """Counts, schema, 3D bone-length statistics (mm) and a contact sheet of samples with their
    joints drawn. Bone lengths show where skeleton definitions differ between datasets (e.g.
    SMPL's hips sit closer together than Human3.6M's)."""
    tiles = []
    for d in shard_dirs(path):
        manifest = read_manifest(d)
        exts = collections.Counter()
        shapes = set()
        for i, raw in enumerate(iter_samples(d, decode=False)):
            exts.update(k for k in raw if not k.startswith("__"))
            if i >= 200:
                break
        for i, s in enumerate(iter_samples(d)):
            shapes.add(s.image.shape)
            if len(tiles) < num:
                tiles.append(draw_sample(s))
            if i >= num:
                break
        order = manifest.get("joint_order")
        bones = bone_lengths(d, order, bone_samples or None) if order in BONES else {}
        click.echo(json.dumps({"dir": str(d), "samples": manifest["samples"], "shards": manifest["num_shards"],
                               "skipped": skipped_count(manifest), "joint_order": order,
                               "members (first 200 samples)": dict(exts), "image_shapes": sorted(map(list, shapes)),
                               "bone_lengths_mm": bones}, indent=1))
        if bones:
            click.echo(bone_table(bones))
    if tiles:
        cols = min(4, len(tiles))
        rows = -(-len(tiles) // cols)
        w = max(t.width for t in tiles)
        h = max(t.height for t in tiles)
        board = Image.new("RGB", (cols * w, rows * h))
        for i, t in enumerate(tiles):
            board.paste(t, ((i % cols) * w, (i // cols) * h))
        sheet = sheet or path / "contact_sheet.png"
        board.save(sheet)
        click.echo(f"contact sheet: {sheet}")
