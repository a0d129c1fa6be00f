"""The shard sample: keys, dtypes, shapes, units, and validation.

One sample = one square crop centred on a hand or body. Members inside a tar are named
`<key>.<ext>`; DALI's reader takes everything after the first dot as the extension, so keys
never contain dots. Numeric members are raw little-endian buffers (no .npy header) so DALI reads
them with `dtypes=` / `fn.reinterpret` and no Python in the hot path.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .camera import project
from .files import json_default
from .joints import JOINT_ORDERS

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"      # beside the shards: counts, sha256s, the command, dataset facts

# ext -> (numpy dtype, per-joint width or fixed length, unit). Widths: K x width.
EXT_IMAGE = "jpg"
EXT_MASK = "mask.png"
EXT_JOINTS3D = "joints3d.f32"   # K x 3 float32, camera coordinates (x right, y down, z fwd), mm
EXT_JOINTS2D = "joints2d.f32"   # K x 2 float32, crop pixels (u right, v down)
EXT_VISIBLE = "visible.u8"      # K uint8, 1 = joint labelled and usable
EXT_INTRINSICS = "intrinsics.f32"  # 4 float32: fx, fy, cx, cy of the crop, pixels
EXT_META = "json"
# Order of members inside a tar; a sample's members must be adjacent (DALI requirement).
MEMBER_ORDER = (EXT_IMAGE, EXT_MASK, EXT_JOINTS3D, EXT_JOINTS2D, EXT_VISIBLE, EXT_INTRINSICS, EXT_META)

# Keys every sample's json carries (others are dataset specific and allowed).
REQUIRED_META = ("dataset", "split", "source", "joint_order", "root_index")


class SampleError(ValueError):
    """Bad input: one message naming the file and the sample."""

    def __init__(self, message: str, file: str | None = None, sample: str | None = None):
        where = ", ".join(x for x in (f"file {file}" if file else "", f"sample {sample}" if sample else "") if x)
        super().__init__(f"{message} ({where})" if where else message)
        self.file, self.sample = file, sample
        self.reason = message       # without the location, to count skips by kind


@dataclass
class Sample:
    """A decoded sample. 2D-only samples have joints3d_mm and intrinsics None; background-only
    samples (ImageNet) have no joints at all (K = 0)."""
    key: str
    image: np.ndarray                      # H x W x 3 uint8 RGB
    meta: dict
    mask: np.ndarray | None = None         # H x W uint8, 255 = foreground
    joints3d_mm: np.ndarray | None = None  # K x 3 float32
    joints2d_px: np.ndarray | None = None  # K x 2 float32
    visible: np.ndarray | None = None      # K bool
    intrinsics: np.ndarray | None = None   # (fx, fy, cx, cy) float32
    extra: dict = field(default_factory=dict)


def _f32(a) -> bytes:
    return np.ascontiguousarray(a, dtype="<f4").tobytes()


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def encode_sample(sample: Sample, jpeg_quality: int = 95, image_bytes: bytes | None = None) -> dict:
    """Sample -> {ext: bytes} in MEMBER_ORDER. `image_bytes` reuses an already encoded JPEG."""
    validate(sample)
    members = {EXT_IMAGE: image_bytes if image_bytes is not None else encode_jpeg(sample.image, jpeg_quality)}
    if sample.mask is not None:
        members[EXT_MASK] = encode_png(sample.mask)
    if sample.joints3d_mm is not None:
        members[EXT_JOINTS3D] = _f32(sample.joints3d_mm)
    if sample.joints2d_px is not None:
        members[EXT_JOINTS2D] = _f32(sample.joints2d_px)
        members[EXT_VISIBLE] = np.asarray(sample.visible, dtype=np.uint8).tobytes()
    if sample.intrinsics is not None:
        members[EXT_INTRINSICS] = _f32(sample.intrinsics)
    members[EXT_META] = json.dumps(sample.meta, sort_keys=True, default=json_default).encode()
    return members


def decode_members(key: str, members: dict) -> Sample:
    """{ext: bytes} as read from a tar -> Sample (inverse of encode_sample)."""
    try:
        meta = json.loads(members[EXT_META])
        image = np.asarray(Image.open(io.BytesIO(members[EXT_IMAGE])).convert("RGB"))
    except KeyError as e:
        raise SampleError(f"missing member {e.args[0]!r}", sample=key) from None
    except Exception as e:
        raise SampleError(f"undecodable member: {e}", sample=key) from None
    k = len(JOINT_ORDERS.get(meta.get("joint_order"), ()))
    mask = None
    if EXT_MASK in members:
        mask = np.asarray(Image.open(io.BytesIO(members[EXT_MASK])).convert("L"))

    def arr(ext, dtype, shape):
        if ext not in members:
            return None
        a = np.frombuffer(members[ext], dtype=dtype)
        if a.size != int(np.prod(shape)):
            raise SampleError(f"{ext} has {a.size} values, expected {int(np.prod(shape))}", sample=key)
        return a.reshape(shape).copy()

    visible = arr(EXT_VISIBLE, np.uint8, (k,))
    return Sample(
        key=key, image=image, meta=meta, mask=mask,
        joints3d_mm=arr(EXT_JOINTS3D, "<f4", (k, 3)),
        joints2d_px=arr(EXT_JOINTS2D, "<f4", (k, 2)),
        visible=None if visible is None else visible.astype(bool),
        intrinsics=arr(EXT_INTRINSICS, "<f4", (4,)),
    )


def validate(sample: Sample, reprojection_tol_px: float = 1.0) -> None:
    """Raise SampleError on any violation of the schema or of value sanity."""
    key = sample.key
    if not key or "." in key or "/" in key:
        raise SampleError("key must be non-empty and contain no '.' or '/'", sample=key)
    img = sample.image
    if img is None or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise SampleError(f"image must be HxWx3 uint8, got {None if img is None else (img.shape, img.dtype)}", sample=key)
    for name in REQUIRED_META:
        if name not in sample.meta:
            raise SampleError(f"meta lacks {name!r}", sample=key)
    order = sample.meta["joint_order"]
    if order not in JOINT_ORDERS:
        raise SampleError(f"unknown joint order {order!r}", sample=key)
    k = len(JOINT_ORDERS[order])
    if sample.mask is not None:
        m = sample.mask
        if m.dtype != np.uint8 or m.shape != img.shape[:2]:
            raise SampleError(f"mask must be HxW uint8 matching the image, got {m.shape} {m.dtype}", sample=key)
    if k == 0:
        if sample.joints2d_px is not None or sample.joints3d_mm is not None:
            raise SampleError("a sample with joint order 'none' carries joints", sample=key)
        return
    if sample.joints2d_px is None or sample.visible is None:
        raise SampleError("joints2d_px and visible are required for samples with joints", sample=key)
    checks = [("joints2d_px", sample.joints2d_px, (k, 2)), ("visible", sample.visible, (k,))]
    if sample.joints3d_mm is not None:
        checks.append(("joints3d_mm", sample.joints3d_mm, (k, 3)))
    if sample.intrinsics is not None:
        checks.append(("intrinsics", sample.intrinsics, (4,)))
    for name, a, shape in checks:
        a = np.asarray(a)
        if a.shape != shape:
            raise SampleError(f"{name} has shape {a.shape}, expected {shape} for {order}", sample=key)
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            raise SampleError(f"{name} contains NaN or inf", sample=key)
    if (sample.joints3d_mm is None) != (sample.intrinsics is None):
        raise SampleError("joints3d_mm and intrinsics come together (a 2D-only sample has neither)", sample=key)
    if sample.joints3d_mm is not None:
        j3 = np.asarray(sample.joints3d_mm, np.float64)
        if np.any(j3[:, 2] <= 0):
            raise SampleError("joints3d_mm has a joint at or behind the camera (z <= 0)", sample=key)
        # Metres stored as millimetres is the most common conversion bug: hands and bodies
        # span more than 10 mm, and no camera-frame joint lies 100 m away.
        span = float(np.ptp(j3, axis=0).max())
        if span < 10.0 or np.abs(j3).max() > 1e5:
            raise SampleError(f"joints3d_mm spans {span:.3g} mm: not millimetres?", sample=key)
        fx, fy, _, _ = (float(v) for v in sample.intrinsics)
        if fx <= 0 or fy <= 0:
            raise SampleError("intrinsics fx, fy must be positive", sample=key)
        err = np.abs(project(j3, sample.intrinsics) - sample.joints2d_px).max()
        if not math.isfinite(err) or err > reprojection_tol_px:
            raise SampleError(f"joints3d_mm projected with intrinsics misses joints2d_px by {err:.3g} px", sample=key)
