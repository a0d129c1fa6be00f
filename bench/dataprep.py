"""Conversion throughput: FreiHAND and RHD training splits (dataprep.freihand.convert,
dataprep.rhd.convert) in samples/s per worker, against the JPEG/PNG decode + JPEG encode every
sample must pay (measured in the same run, same images).

    python -m bench.dataprep [--quick]
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image

from dataprep import freihand, rhd
from dataprep.common import DEFAULT_CROP_SIZE
from dataprep.synthetic import generate_demo

from bench.results import write_results

def decode_encode_rate(paths: list[Path], crop_size: int) -> float:
    """samples/s of the unavoidable work: decode the source image, encode a crop-size JPEG."""
    t = time.perf_counter()
    for p in paths:
        with Image.open(p) as im:
            rgb = im.convert("RGB")
        small = rgb.resize((crop_size, crop_size))   # same output size as the real crop
        small.save(io.BytesIO(), format="JPEG", quality=95)
    return len(paths) / (time.perf_counter() - t)


def convert_rate(convert, src: Path, out: Path, workers: int, limit: int) -> tuple[float, int]:
    """samples/s of one training-split conversion (the dataset module's plain `convert`)."""
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    manifest = convert(src, out / "train", "train", workers=workers, limit=limit)
    return manifest["samples"] / (time.perf_counter() - t), manifest["samples"]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small dataset, about a minute")
    args = ap.parse_args()
    n_source, n_target = (150, 300) if args.quick else (1000, 2000)
    workers_list = [1, 2] if (os.cpu_count() or 1) >= 2 else [1]
    root = Path(tempfile.mkdtemp(prefix="bench_dataprep_"))
    try:
        t = time.perf_counter()
        paths = generate_demo(root / "raw", source_size=n_source, target_train=n_target, target_test=10, seed=0)
        rhd_root = paths.target.parent
        gen_s = time.perf_counter() - t
        jobs = {
            "freihand": (freihand.convert, paths.source, sorted((paths.source / "training" / "rgb").glob("*.jpg"))),
            "rhd": (rhd.convert, rhd_root, sorted((paths.target / "training" / "color").glob("*.png"))),
        }
        rows, raw = [], {"generated_in_s": gen_s, "crop_size": DEFAULT_CROP_SIZE, "datasets": {}}
        ratios = {}
        for name, (convert, src, images) in jobs.items():
            limit = len(images)
            base = decode_encode_rate(images, DEFAULT_CROP_SIZE)
            entry = {"images": limit, "decode_encode_samples_per_s": base, "convert": {}}
            for w in workers_list:
                rate, n = convert_rate(convert, src, root / f"out_{name}_{w}", w, limit)
                entry["convert"][str(w)] = {"samples": n, "samples_per_s": rate, "per_worker": rate / w}
                ratios[f"{name}_w{w}_per_worker_vs_decode_encode"] = rate / w / base
                rows.append((name, w, n, rate, rate / w, base, rate / w / base))
            raw["datasets"][name] = entry
        print(f"{'dataset':10} {'workers':>7} {'samples':>8} {'samples/s':>10} {'per worker':>10} {'dec+enc/s':>10} {'ratio':>6}")
        for r in rows:
            print(f"{r[0]:10} {r[1]:>7} {r[2]:>8} {r[3]:>10.1f} {r[4]:>10.1f} {r[5]:>10.1f} {r[6]:>6.2f}")
        raw["ratios"] = ratios
        print(f"wrote {write_results('dataprep', args.quick, raw)}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
