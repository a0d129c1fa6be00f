"""The demo data sets in released layouts: FreiHAND (source), RHD (target) and ImageNet
validation (backgrounds), written so the real converters read them; and a contact sheet."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from shards.camera import project

from .hands import FINGER_JOINTS, SOURCE_STYLE, TARGET_STYLE
from .photos import bundled_photos
from .raster import to_uint8
from .scenes import joint_radii, render_source, render_target, rhd_depth_png, rng_for, source_version_image, target_image, visibility


FREIHAND_VERSIONS = ("gs", "hom", "sample", "auto")    # image id // annotations, as released
RHD_PERM = np.array([0, 4, 3, 2, 1, 8, 7, 6, 5, 12, 11, 10, 9, 16, 15, 14, 13, 20, 19, 18, 17])   # hand21 = rhd[PERM]


HAND21_TO_RHD = np.argsort(RHD_PERM)                    # rhd = hand21[HAND21_TO_RHD] (tip -> MCP per finger)


def freihand_item(task):
    """Worker: render and write one annotation (4 versions + mask, or 1 evaluation image +
    segmap). Returns (xyz metres (21,3), K (3,3))."""
    root, folder, index, n, seed, size = task
    rng = rng_for(seed, f"freihand/{folder}", index)
    canvas, joints, focal = render_source(rng, size)
    mask = np.where(canvas.alpha >= 0.5, 255, 0).astype(np.uint8)
    light = np.array([rng.normal(0, 0.2), rng.normal(-0.2, 0.2), -1.0])    # frontal, one per capture
    if folder == "training":
        for v, version in enumerate(FREIHAND_VERSIONS):
            img = source_version_image(rng, canvas, version, light)
            Image.fromarray(img).save(root / folder / "rgb" / f"{v * n + index:08d}.jpg", quality=92)
        Image.fromarray(mask).save(root / folder / "mask" / f"{index:08d}.jpg", quality=92)
    else:
        img = source_version_image(rng, canvas, FREIHAND_VERSIONS[index % 4], light)
        Image.fromarray(img).save(root / folder / "rgb" / f"{index:08d}.jpg", quality=92)
        Image.fromarray(mask).save(root / folder / "segmap" / f"{index:08d}.png")
    # As released: FreiHAND's K counts pixel centres from 0 (docs/datasets.md), the renderer pixel
    # corners (its principal point size/2 is the centre-convention size/2 - 0.5).
    k = np.array([[focal, 0, size / 2 - 0.5], [0, focal, size / 2 - 0.5], [0, 0, 1]])
    return joints / 1000.0, k


def rhd_item(task):
    """Worker: render and write one RHD id (color, mask, depth). Returns its annotation entry."""
    root, folder, index, seed, size = task
    rng = rng_for(seed, f"rhd/{folder}", index)
    main_side = ("left", "right")[index % 2]        # balanced sides
    canvas, hands, focal, shape = render_target(rng, size, main_side)
    image = target_image(rng, canvas, shape.skin)
    radii = joint_radii(shape)
    k = np.array([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1]])
    xyz = np.concatenate([hands["left"][HAND21_TO_RHD], hands["right"][HAND21_TO_RHD]]) / 1000.0
    vis = np.concatenate([visibility(canvas, hands[s], radii)[HAND21_TO_RHD] for s in ("left", "right")])
    uv = project(xyz, (focal, focal, size / 2, size / 2))
    Image.fromarray(image).save(root / folder / "color" / f"{index:05d}.png", compress_level=1)
    Image.fromarray(canvas.label).save(root / folder / "mask" / f"{index:05d}.png", compress_level=1)
    Image.fromarray(rhd_depth_png(canvas, rng)).save(root / folder / "depth" / f"{index:05d}.png", compress_level=1)
    return {"xyz": xyz.astype(np.float32), "uv_vis": np.column_stack([uv, vis]).astype(np.float32),
            "K": k.astype(np.float32)}


def write_backgrounds(out: Path, count: int, seed: int) -> None:
    """Random crops/resizes/flips/colour jitter of the bundled photos, saved as
    ILSVRC2012_val_%08d.JPEG (1-based like the release), each shorter side 200..400 px."""
    out.mkdir(parents=True, exist_ok=True)
    photos = bundled_photos()
    for i in range(count):
        rng = rng_for(seed, "imagenet", i)
        name, photo = photos[i % len(photos)]
        w, h = photo.size
        area = rng.uniform(0.25, 1.0) * w * h
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = int(min(w, np.sqrt(area * aspect))), int(min(h, np.sqrt(area / aspect)))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = photo.crop((x0, y0, x0 + cw, y0 + ch))
        shorter = rng.uniform(200, 400)
        scale = shorter / min(cw, ch)
        crop = crop.resize((max(1, round(cw * scale)), max(1, round(ch * scale))), Image.BICUBIC)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        if crop.mode == "RGB":
            arr = np.asarray(crop, np.float32) / 255 * rng.uniform(0.8, 1.2, 3)
            crop = Image.fromarray(to_uint8(arr))
        crop.save(out / f"ILSVRC2012_val_{i + 1:08d}.JPEG", quality=90)


@dataclass
class DemoPaths:
    source: Path        # FreiHAND_pub_v2 (for `dataprep freihand`)
    target: Path        # RHD_published_v2 (for `dataprep rhd`)
    backgrounds: Path   # ILSVRC2012_val (for `dataprep imagenet`)


def _map(fn, tasks, workers: int, desc: str):
    pool = mp.get_context("fork").Pool(workers) if workers > 1 and len(tasks) > 1 else None
    try:
        results = pool.imap(fn, tasks, chunksize=4) if pool else map(fn, tasks)
        out = []
        for i, r in enumerate(results, 1):
            out.append(r)
            if i % 500 == 0 or i == len(tasks):
                print(f"  {desc}: {i}/{len(tasks)}", file=sys.stderr)
        return out
    finally:
        if pool:
            pool.close()
            pool.join()


def generate_demo(out_root, source_size: int = 1000, target_train: int = 1000, target_test: int = 250,
                  seed: int = 0, image_size: tuple[int, int] = (224, 320), source_test: int | None = None,
                  backgrounds: int = 64, workers: int | None = None) -> DemoPaths:
    """Write the three demo trees under out_root and return their paths.

    source_size: FreiHAND training annotations (4 images each); source_test: evaluation images
    (default source_size // 8, at least 1); target_train / target_test: RHD training / evaluation
    ids; image_size: (FreiHAND side, RHD side) in pixels; backgrounds: photographs written."""
    out_root = Path(out_root)
    source_test = max(1, source_size // 8) if source_test is None else source_test
    for name, n in (("source_size", source_size), ("target_train", target_train), ("target_test", target_test),
                    ("source_test", source_test), ("backgrounds", backgrounds)):
        if n < 1:
            raise ValueError(f"{name} must be at least 1, got {n}")
    src_size, tgt_size = image_size
    if min(src_size, tgt_size) < 32:
        raise ValueError(f"image sizes must be at least 32 px, got {image_size}")
    workers = workers or len(os.sched_getaffinity(0))
    paths = DemoPaths(out_root / "FreiHAND_pub_v2", out_root / "RHD_published_v2", out_root / "ILSVRC2012_val")

    for folder, n in (("training", source_size), ("evaluation", source_test)):
        for sub in ("rgb", "mask" if folder == "training" else "segmap"):
            (paths.source / folder / sub).mkdir(parents=True, exist_ok=True)
        tasks = [(paths.source, folder, i, n, seed, src_size) for i in range(n)]
        results = _map(freihand_item, tasks, workers, f"FreiHAND {folder}")
        xyz = [r[0] for r in results]
        ks = [r[1] for r in results]
        scale = [float(np.linalg.norm(x[9] - x[10])) for x in xyz]
        (paths.source / f"{folder}_xyz.json").write_text(json.dumps([x.tolist() for x in xyz]))
        (paths.source / f"{folder}_K.json").write_text(json.dumps([k.tolist() for k in ks]))
        (paths.source / f"{folder}_scale.json").write_text(json.dumps(scale))

    for folder, n in (("training", target_train), ("evaluation", target_test)):
        for sub in ("color", "mask", "depth"):
            (paths.target / folder / sub).mkdir(parents=True, exist_ok=True)
        tasks = [(paths.target, folder, i, seed, tgt_size) for i in range(n)]
        anno = dict(enumerate(_map(rhd_item, tasks, workers, f"RHD {folder}")))
        # As released: a Python-2-era protocol-2 pickle naming numpy.core.multiarray.
        blob = pickle.dumps(anno, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        (paths.target / folder / f"anno_{folder}.pickle").write_bytes(blob)

    write_backgrounds(paths.backgrounds, backgrounds, seed)
    (out_root / "demo.json").write_text(json.dumps({
        "seed": seed, "source_size": source_size, "source_test": source_test, "target_train": target_train,
        "target_test": target_test, "image_size": list(image_size), "backgrounds": backgrounds,
        "source_style": SOURCE_STYLE.name, "target_style": TARGET_STYLE.name,
        "note": "procedurally rendered hands; FreiHAND layout without training_{mano,verts}.json"}, indent=1))
    return paths


def contact_sheet(paths: DemoPaths, out_png, columns: int = 8, tile: int = 128) -> Path:
    """A PNG of source images (all 4 versions of two annotations), target images with their
    projected visible joints, and backgrounds: a quick look at both domains."""
    def tile_of(path, joints_uv=None, size=None, vis=None):
        im = Image.open(path).convert("RGB")
        if joints_uv is not None:
            draw = ImageDraw.Draw(im)
            for f in range(5):
                chain = [0] + list(FINGER_JOINTS[f])
                for a, b in zip(chain[:-1], chain[1:]):
                    draw.line([tuple(joints_uv[a]), tuple(joints_uv[b])], fill=(255, 255, 0), width=1)
            for j, (u, v) in enumerate(joints_uv):
                colour = (0, 255, 0) if vis is None or vis[j] else (255, 0, 0)
                draw.ellipse((u - 1.5, v - 1.5, u + 1.5, v + 1.5), fill=colour)
        return im.resize((tile, tile), Image.BILINEAR)

    tiles = []
    xyz = np.array(json.loads((paths.source / "training_xyz.json").read_text()))
    ks = np.array(json.loads((paths.source / "training_K.json").read_text()))
    n = len(xyz)
    for a in range(min(2, n)):
        for v in range(4):
            tiles.append(tile_of(paths.source / "training" / "rgb" / f"{v * n + a:08d}.jpg"))
    for a in range(min(columns, n)):
        uv = project(xyz[a] * 1000, (ks[a][0][0], ks[a][0][0], ks[a][0][2] + 0.5, ks[a][1][2] + 0.5))    # PIL draws in corners
        tiles.append(tile_of(paths.source / "training" / "rgb" / f"{n + a:08d}.jpg", uv))
    anno = pickle.loads((paths.target / "training" / "anno_training.pickle").read_bytes())
    ids = sorted(anno)[:2 * columns]
    for i in ids:
        tiles.append(tile_of(paths.target / "training" / "color" / f"{i:05d}.png"))
    for i in ids[:columns]:
        e = anno[i]
        labels = np.asarray(Image.open(paths.target / "training" / "mask" / f"{i:05d}.png"))
        main = 0 if ((labels >= 2) & (labels <= 17)).sum() > (labels >= 18).sum() else 21
        raw = np.arange(main, main + 21)[RHD_PERM]
        tiles.append(tile_of(paths.target / "training" / "color" / f"{i:05d}.png", e["uv_vis"][raw, :2], vis=e["uv_vis"][raw, 2] > 0))
    for p in sorted(paths.backgrounds.glob("*.JPEG"))[:columns]:
        tiles.append(tile_of(p))
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * tile, rows * tile), (255, 255, 255))
    for k, t in enumerate(tiles):
        sheet.paste(t, ((k % columns) * tile, (k // columns) * tile))
    sheet.save(out_png)
    return Path(out_png)
