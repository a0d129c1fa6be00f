"""Tiny synthetic shards for pipeline tests and benchmarks: known images, masks and hands written
with the real ShardWriter + encode_sample, so DALI reads exactly what dataprep would write."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from dataprep.synthetic.raster import blob_mask  # noqa: F401  (the tests' foreground masks)
from shards.schema import Sample
from shards.writer import write_samples
from tests.hand_fixtures import hand21_mm, project


def smooth_image(size: int, seed: int) -> np.ndarray:
    """A colourful image without sharp edges (JPEG keeps it within a few levels)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    phase = np.random.default_rng(seed).uniform(0, 2 * np.pi, 3)
    rgb = [127.5 + 100 * np.sin(2 * np.pi * (xx * (c + 1) + yy * (2 - c) * 0.7) + phase[c]) for c in range(3)]
    return np.clip(np.dstack(rgb), 0, 255).astype(np.uint8)


def flat_image(size, colour) -> np.ndarray:
    h, w = (size, size) if np.isscalar(size) else size
    return np.broadcast_to(np.asarray(colour, np.uint8), (h, w, 3)).copy()


def soft_mask(size: int) -> np.ndarray:
    """Every value 0..255 occurs: a ramp along x, so compositing is checked at all weights."""
    return np.broadcast_to(np.linspace(0, 255, size).round().astype(np.uint8), (size, size)).copy()


def gaussian_dot(size: int, uv, sigma: float = 1.5, peak: float = 255.0) -> np.ndarray:
    """A white Gaussian blob centred on continuous coordinate uv (pixel centres at +0.5)."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    d2 = (xx - uv[0]) ** 2 + (yy - uv[1]) ** 2
    return np.repeat((peak * np.exp(-d2 / (2 * sigma ** 2))).round().astype(np.uint8)[..., None], 3, axis=2)


def meta(dataset: str, joint_order: str = "hand21") -> dict:
    return {"dataset": dataset, "split": "train", "source": "synthetic", "joint_order": joint_order,
            "root_index": 0 if joint_order != "none" else None}


def hand_sample(key: str, i: int, size: int, image: np.ndarray | None = None, mask: np.ndarray | None = None,
                with_3d: bool = True) -> Sample:
    """A hand21 sample whose joints project into the crop; joint 9 (middle MCP) lies near the
    centre, within 10% of the crop side."""
    xyz = hand21_mm((0.0, 0.0, 500.0 + 10 * i), scale=0.5, rotate_deg=15.0 * i)
    f = 0.6 * size
    # put the middle MCP at the crop centre plus a small per-sample offset
    target = np.array([size / 2 + (i % 3 - 1) * 0.08 * size, size / 2 + (i % 2 - 0.5) * 0.1 * size])
    uv9 = project(xyz[9:10], f, f, 0.0, 0.0)[0]
    intr = np.float32([f, f, target[0] - uv9[0], target[1] - uv9[1]])
    uv = project(xyz, *intr).astype(np.float32)
    return Sample(key=key, image=image if image is not None else smooth_image(size, i), mask=mask,
                  joints3d_mm=xyz.astype(np.float32) if with_3d else None, joints2d_px=uv,
                  visible=(np.arange(21) + i) % 4 > 0, intrinsics=intr if with_3d else None, meta=meta("synthetic"))


def background_sample(key: str, image: np.ndarray) -> Sample:
    return Sample(key=key, image=image, meta=meta("backgrounds", "none"))


def write_shards(out_dir, samples, *, per_shard: int = 4, name: str = "shard") -> Path:
    return write_samples(out_dir, samples, per_shard=per_shard, name=name, command=["tests"])


def jpeg_roundtrip(image: np.ndarray) -> np.ndarray:
    """What a decoder gives back for the JPEG encode_sample stores."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=95)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
