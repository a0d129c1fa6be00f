"""Shared conversion code: reading released images, arrays and pickles, crops and their camera,
and the parallel driver (convert_split) that feeds ShardWriter."""
from __future__ import annotations

import functools
import json
import multiprocessing as mp
import pickle
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from PIL import Image

from shards.files import atomic_write_text
from shards.progress import progress
from shards.schema import Sample, SampleError, encode_sample
from shards.writer import ShardWriter

DEFAULT_CROP_SIZE = 288     # 256 training input plus room for rotation/translation augmentation
DEFAULT_CONTEXT = 1.5       # crop side = context x the joints' bounding-box side


# -- images ---------------------------------------------------------------------------------
def load_rgb(path, sample: str | None = None) -> np.ndarray:
    """Decode an image file to HxWx3 uint8 RGB (greyscale, CMYK, palette and alpha converted)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise SampleError("image file missing", file=str(path), sample=sample) from None
    except Exception as e:
        raise SampleError(f"corrupt or unreadable image: {e}", file=str(path), sample=sample) from None


def load_image(path, sample: str | None = None) -> Image.Image:
    """Open an image with PIL, decoding it fully so corrupt data fails here, not later."""
    try:
        im = Image.open(path)
        im.load()
        return im
    except FileNotFoundError:
        raise SampleError("image file missing", file=str(path), sample=sample) from None
    except Exception as e:
        raise SampleError(f"corrupt or unreadable image: {e}", file=str(path), sample=sample) from None


# -- annotations ----------------------------------------------------------------------------
def check_array(a, shape: tuple, what: str, file, sample: str | None) -> np.ndarray:
    """float64 array of exactly `shape`, finite, or a SampleError naming file and sample."""
    try:
        a = np.asarray(a, np.float64)
    except (TypeError, ValueError) as e:
        raise SampleError(f"{what} is not numeric: {e}", file=str(file), sample=sample) from None
    if a.shape != shape:
        found = f"{a.size} values, expected {shape[0]}" if len(shape) == 1 and a.ndim == 1 else \
            f"shape {a.shape}, expected {shape}"
        raise SampleError(f"{what} has {found}", file=str(file), sample=sample)
    if not np.all(np.isfinite(a)):
        raise SampleError(f"{what} has NaN/inf", file=str(file), sample=sample)
    return a


def key_part(text: str) -> str:
    """A name from a dataset (sequence, camera, file stem) made fit for a sample key: keys hold no
    '.' or '/' (DALI splits the extension at the first dot)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


# -- crops ----------------------------------------------------------------------------------
@dataclass
class Crop:
    """Square crop of side `side` original pixels centred at (cu, cv), resized to `size`,
    optionally mirrored left-right. Continuous pixel coordinates: (0, 0) is the top-left
    corner of the first pixel, the convention PIL's affine transform and DALI's warp use.
    crop = A @ [u, v, 1]."""
    cu: float
    cv: float
    side: float
    size: int
    mirror: bool = False

    @property
    def matrix(self) -> np.ndarray:
        s = self.size / self.side
        x0, y0 = self.cu - self.side / 2, self.cv - self.side / 2
        a = np.array([[s, 0.0, -s * x0], [0.0, s, -s * y0]])
        if self.mirror:
            a = np.array([[-1.0, 0.0, self.size], [0.0, 1.0, 0.0]]) @ np.vstack([a, [0, 0, 1]])
        return a

    def points(self, uv: np.ndarray) -> np.ndarray:
        a = self.matrix
        return (np.asarray(uv, np.float64) @ a[:, :2].T + a[:, 2]).astype(np.float32)

    def intrinsics(self, fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
        """Crop camera. Mirroring negates camera X (see `points3d`), so fx stays positive."""
        s = self.size / self.side
        cu, cv = self.points(np.array([[cx, cy]]))[0]
        return np.array([fx * s, fy * s, cu, cv], np.float32)

    def points3d(self, xyz: np.ndarray) -> np.ndarray:
        xyz = np.array(xyz, np.float32)
        if self.mirror:
            xyz[:, 0] = -xyz[:, 0]
        return xyz

    def image(self, img: np.ndarray, resample=Image.BILINEAR, fill=0) -> np.ndarray:
        inv = np.linalg.inv(np.vstack([self.matrix, [0, 0, 1]]))[:2]
        pil = Image.fromarray(img)
        out = pil.transform((self.size, self.size), Image.AFFINE, data=tuple(inv.ravel()),
                            resample=resample, fillcolor=fill)
        return np.asarray(out)

    def mask(self, mask: np.ndarray) -> np.ndarray:
        """Binary 0/255 mask resampled with the image (bilinear, then thresholded)."""
        return np.where(self.image(mask.astype(np.uint8)) >= 128, 255, 0).astype(np.uint8)

    def meta(self) -> dict:
        return {"crop_affine": np.round(self.matrix, 6).tolist(), "mirrored": self.mirror}


def crop_around(uv: np.ndarray, size: int, context: float = DEFAULT_CONTEXT, mirror: bool = False,
                min_side: float = 32.0) -> Crop:
    """Square crop centred on the bounding box of the 2D points, side = context x its longer side."""
    lo, hi = uv.min(0), uv.max(0)
    c = (lo + hi) / 2
    side = max(float((hi - lo).max()) * context, min_side)
    return Crop(float(c[0]), float(c[1]), side, size, mirror)


# -- pickles --------------------------------------------------------------------------------
class RestrictedUnpickler(pickle.Unpickler):
    """Admit only numpy arrays/scalars/dtypes and builtin containers: dataset pickles are
    untrusted input."""
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("builtins", "set"),
        ("builtins", "frozenset"), ("builtins", "slice"), ("builtins", "complex"),
        ("collections", "OrderedDict"), ("_codecs", "encode"), ("copy_reg", "_reconstructor"),
        ("copyreg", "_reconstructor"), ("builtins", "object"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"forbidden global {module}.{name} in pickle")


def load_pickle(path, encoding: str = "latin1"):
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, encoding=encoding).load()
    except FileNotFoundError:
        raise SampleError("annotation file missing", file=str(path)) from None
    except Exception as e:
        raise SampleError(f"unreadable pickle: {e}", file=str(path)) from None


# -- the driver -----------------------------------------------------------------------------
class ConversionError(RuntimeError):
    """A conversion stopped on a bad input item (without --skip-bad): the message names the file
    and sample. Complete shards are kept, and a rerun resumes after them."""


def warn_on_stderr(message: str) -> None:
    """The convert functions' default `warn`: a dataset part they pass over (a missing subject, an
    empty split) is worth a line, not an error. The CLI passes click's echo instead."""
    print(message, file=sys.stderr)


SKIPPED = "skipped.jsonl"    # one line per skipped item, beside manifest.json
SKIP_EXAMPLES = 10           # skipped items named in the manifest itself


def _convert_item(make_samples: Callable, jpeg_quality: int, item):
    """Worker: item -> [(key, members)] or ('error', {message, reason, file, sample}). Runs in a
    pool process (a plain dict crosses the process boundary; the exception's fields would not)."""
    try:
        return [(s.key, encode_sample(s, jpeg_quality)) for s in make_samples(item)]
    except SampleError as e:
        return ("error", {"message": str(e), "reason": e.reason, "file": e.file, "sample": e.sample})


_WORK = None


def _run_work(item):
    return _WORK(item)


class SkipLog:
    """Skipped items (--skip-bad): appended to OUT_DIR/skipped.jsonl as they happen and
    summarised in the manifest (count per kind of reason, the first few keys). A killed run
    leaves lines for items after the last complete shard; a rerun redoes those items, so it
    keeps only the lines before `items_done`."""

    def __init__(self, out_dir: Path, items_done: int):
        self.path = Path(out_dir) / SKIPPED
        self.entries = []
        if self.path.exists() and items_done:
            with open(self.path) as f:
                self.entries = [e for e in map(json.loads, f) if e["item"] < items_done]
        atomic_write_text(self.path, "".join(json.dumps(e, sort_keys=True) + "\n" for e in self.entries))
        self._file = open(self.path, "a")

    def add(self, item_no: int, key: str, error: dict) -> None:
        entry = {"item": item_no, "key": key, "reason": error["reason"], "file": error["file"]}
        self.entries.append(entry)
        self._file.write(json.dumps(entry, sort_keys=True) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def summary(self) -> dict:
        by_reason: dict[str, int] = {}
        for e in self.entries:
            kind = reason_kind(e["reason"])
            by_reason[kind] = by_reason.get(kind, 0) + 1
        return {"count": len(self.entries), "by_reason": dict(sorted(by_reason.items(), key=lambda kv: -kv[1])),
                "first": [{"key": e["key"], "reason": e["reason"]} for e in self.entries[:SKIP_EXAMPLES]],
                "file": SKIPPED}


def skipped_count(manifest: dict) -> int:
    """Skips in a manifest: a SkipLog summary, or the list a plain ShardWriter writes."""
    skipped = manifest.get("skipped") or []
    return skipped["count"] if isinstance(skipped, dict) else len(skipped)


def reason_kind(reason: str) -> str:
    """A skip reason with its numbers blanked, so 'frame 12 has NaN' and 'frame 13 has NaN' count
    as one kind."""
    return re.sub(r"\d+", "#", reason)


def convert_split(items: list, make_samples: Callable[[object], Iterable[Sample]], out_dir: Path, *,
                  workers: int = 1, limit: int | None = None, skip_bad: bool = False,
                  shard_count: int = 2000, shard_bytes: int = 512 << 20, jpeg_quality: int = 95,
                  shuffle_seed: int | None = 0, manifest_extra: dict | None = None,
                  desc: str = "convert", item_key: Callable[[object], str] = str) -> dict:
    """Convert `items` (work units, e.g. one annotation id) into shards in `out_dir`.

    Items are shuffled with `shuffle_seed` before writing (DALI's reader only shuffles within a
    small buffer), cut to `limit`, converted in `workers` processes in order, and written by one
    ShardWriter; a rerun resumes after the last complete shard. `make_samples` must be
    picklable (a module-level function or functools.partial of one). A skipped item is named by
    the sample its error names, else by `item_key(item)`; the manifest's `skipped` is a summary
    (see SkipLog) and OUT_DIR/skipped.jsonl lists every one."""
    items = list(items)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(items)
    if limit is not None:
        items = items[:limit]
    extra = {"shuffle_seed": shuffle_seed, "limit": limit, "jpeg_quality": jpeg_quality,
             **(manifest_extra or {})}
    writer = ShardWriter(out_dir, max_count=shard_count, max_bytes=shard_bytes, manifest_extra=extra)
    start = writer.items_done
    todo = items[start:]
    skips = SkipLog(out_dir, start)
    # Workers are forked after this is set, so they inherit it: tasks carry only the item, never
    # the (often large) annotation arrays bound into make_samples.
    global _WORK
    _WORK = functools.partial(_convert_item, make_samples, jpeg_quality)
    bar = progress(total=len(items), initial=start, desc=desc, unit="item", dynamic_ncols=True)
    pool = mp.get_context("fork").Pool(workers) if workers > 1 and todo else None
    try:
        results = pool.imap(_run_work, todo, chunksize=8) if pool else map(_run_work, todo)
        for item_no, result in enumerate(results, start):
            bar.update(1)
            if isinstance(result, tuple) and result[0] == "error":
                if not skip_bad:
                    raise ConversionError(f"{desc}: {result[1]['message']}  (complete shards are kept and a rerun "
                                          "resumes after them; --skip-bad records and skips bad samples)")
                skips.add(item_no, result[1]["sample"] or item_key(items[item_no]), result[1])
                continue
            for key, members in result:
                writer.write(key, members, item_no + 1)
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
        skips.close()
        if pool:
            pool.terminate()
    # The writer's own manifest field would list every skip: the summary replaces it.
    writer.manifest_extra["skipped"] = skips.summary()
    return writer.close(len(items))
