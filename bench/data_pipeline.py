"""Pre-training input throughput: the DALI pipeline (shards.pipelines.pretrain_loader) against
(a) a PyTorch DataLoader doing the same decode + composite + augmentation + normalise with
PIL/torchvision in as many worker processes as DALI has threads, and (b) the bound of decoding the
same JPEG/PNG bytes alone (DALI decoders, same threads). Plus a per-stage profile of the DALI
graph and the host memory (peak RSS) after epoch 1 and epoch 5. On the CPU it also runs the loader
with POSEMAE_CPU_IMAGE_OPS=dali (DALI's own warp and blend instead of OpenCV's; on a GPU the two
rows are the same graph). And the two readers in one graph (the source stream up to its colour
stage): the global-order reader every loader uses (shards.ordered_source: DALI's external source
with spawned workers, augmentation from each sample's position) against DALI's own
fn.readers.webdataset with its random operators, the reader the loaders used before.

    python -m bench.data_pipeline [--quick]

Two DataLoaders: `torchvision` is the idiomatic one (composite at the stored size as the paper
orders it, TF.affine on image and mask, resize, ColorJitter, ToTensor, Normalize); `fused` does
what the DALI graph does, by hand: one RGBA warp straight to 256 px, the jitter folded into the
normalisation, the blend in torch. Both draw the same augmentation distribution as the DALI graph,
and each worker reads its own shards (webdataset's own worker split is off: it would split them a
second time).

Data: synthetic shards written with the real ShardWriter in a temp dir: 288 px JPEG crops of
photographs (quality 95) with a PNG foreground mask on 90% of them, and background images stored
like `dataprep imagenet` stores them (shorter side 288). Output 256 px, batch 64. The machine may
be shared, so each figure is the median of interleaved rounds, and CPU time per sample (all
threads and worker processes) is reported next to wall-clock samples/s: it is what contention
disturbs least. Writes bench/results/data_pipeline.json.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.results import write_results

INPUT = 256
STORED = 288
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


# -- data -------------------------------------------------------------------------------------
def make_data(root: Path, n_source: int, n_target: int, n_backgrounds: int) -> dict:
    from dataprep.synthetic.photos import photo_crops
    from dataprep.synthetic.raster import blob_mask
    from shards.schema import Sample
    from shards.writer import write_samples
    rng = np.random.default_rng(0)

    def crops(prefix, n, seed):
        return [Sample(key=f"{prefix}{i:06d}", image=img, mask=blob_mask(STORED, rng) if i % 10 else None,
                       meta={"dataset": prefix, "split": "train", "source": "bench", "joint_order": "none",
                             "root_index": None})
                for i, img in enumerate(photo_crops(n, STORED, seed))]
    paths = {"source": root / "source", "target": root / "target", "backgrounds": root / "backgrounds"}
    write_samples(paths["source"], crops("src", n_source, 1), per_shard=256, name="source", command=["bench"])
    write_samples(paths["target"], crops("tgt", n_target, 2), per_shard=256, name="target", command=["bench"])
    backgrounds = []
    for i, img in enumerate(photo_crops(n_backgrounds, 384, 3)):   # shorter side 288, longer 288..384
        w = int(rng.integers(STORED, 385))
        backgrounds.append(Sample(key=f"bg{i:06d}", image=np.asarray(Image.fromarray(img).resize((w, STORED))),
                                  meta={"dataset": "backgrounds", "split": "train", "source": "synthetic",
                                        "joint_order": "none", "root_index": None}))
    write_samples(paths["backgrounds"], backgrounds, per_shard=256, name="backgrounds", command=["bench"])
    return {k: str(v) for k, v in paths.items()}


# -- (a) the PyTorch DataLoaders doing the same work ------------------------------------------
class ShardSamples(torch.utils.data.IterableDataset):
    """Source + target shards through webdataset, each worker its own shards, shuffled in a
    buffer, a background sample read alongside every sample; `process` does the work."""

    def __init__(self, shard_urls, background_urls, p_bg=0.5, seed=0):
        self.urls, self.background_urls, self.p_bg, self.seed = shard_urls, background_urls, p_bg, seed

    def __iter__(self):
        import webdataset as wds
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        rng = np.random.default_rng(self.seed + wid)
        mine = self.urls[wid::nw] or self.urls
        # We split the shards between workers ourselves: webdataset's default workersplitter
        # would split them again and leave a worker without shards, idle forever (the baseline
        # then runs on fewer workers than DALI has threads).
        def shards(urls):
            return wds.WebDataset(urls, shardshuffle=False, empty_check=False, workersplitter=None)
        backgrounds = iter(shards(self.background_urls).repeat())
        for raw in shards(mine).shuffle(256, rng=_PyRandom(rng)).repeat():
            yield self.process(raw, next(backgrounds), rng)

    @staticmethod
    def decode(raw):
        image = Image.open(io.BytesIO(raw["jpg"])).convert("RGB")
        has_mask = "mask.png" in raw
        mask = Image.open(io.BytesIO(raw["mask.png"])).convert("L") if has_mask else Image.new("L", image.size, 0)
        return image, mask, has_mask

    @staticmethod
    def background_window(background, side, rng) -> Image.Image:
        bg = Image.open(io.BytesIO(background["jpg"])).convert("RGB")
        crop = min(bg.size + (side,))
        left, top = rng.integers(0, bg.size[0] - crop + 1), rng.integers(0, bg.size[1] - crop + 1)
        window = bg.crop((left, top, left + crop, top + crop))
        return window.resize((side, side), Image.BILINEAR) if crop < side else window


class TorchvisionPretrain(ShardSamples):
    """What one would write with torchvision: composite at the stored size (the paper's order),
    TF.affine on image and mask, resize to the input, ColorJitter + a per-channel gain,
    ToTensor, Normalize."""

    def process(self, raw, background, rng):
        import torchvision.transforms as T
        import torchvision.transforms.functional as TF
        image, mask, has_mask = self.decode(raw)
        if has_mask and rng.random() < self.p_bg:
            u = np.asarray(self.background_window(background, image.size[0], rng), np.float32)
            m = np.asarray(mask, np.float32)[..., None] / 255.0
            image = Image.fromarray(np.round(m * np.asarray(image, np.float32) + (1 - m) * u).astype(np.uint8))
        angle, translate, scale, shear = T.RandomAffine.get_params([-30.0, 30.0], [0.1, 0.1], [0.8, 1.25], None,
                                                                   list(image.size))
        bilinear = T.InterpolationMode.BILINEAR
        image = TF.resize(TF.affine(image, angle, translate, scale, shear, interpolation=bilinear), [INPUT, INPUT])
        mask = TF.resize(TF.affine(mask, angle, translate, scale, shear, interpolation=bilinear), [INPUT, INPUT])
        image = T.ColorJitter(brightness=0.4, contrast=0.4)(image)
        gain = torch.from_numpy(rng.uniform(0.9, 1.1, 3).astype(np.float32)).view(3, 1, 1)
        return {"image": TF.normalize(TF.to_tensor(image) * gain, MEAN.tolist(), STD.tolist()),
                "mask": TF.to_tensor(mask), "has_mask": has_mask}


class FusedPretrain(ShardSamples):
    """The DALI graph's fusions by hand: one bilinear RGBA warp (image + mask) straight to the
    input size, the colour jitter folded into the normalisation, the blend after both."""

    def process(self, raw, background, rng):
        image, mask, has_mask = self.decode(raw)
        w, h = image.size
        zoom, angle = rng.uniform(0.8, 1.25), np.deg2rad(rng.uniform(-30, 30))
        shift = rng.uniform(-0.1 * INPUT, 0.1 * INPUT, 2)
        c, s = np.cos(angle), np.sin(angle)
        a = np.array([[c * zoom * INPUT / w, -s * zoom * INPUT / h], [s * zoom * INPUT / w, c * zoom * INPUT / h]])
        t = INPUT / 2 + shift - a @ np.array([w / 2, h / 2])
        inv = np.linalg.inv(np.vstack([np.hstack([a, t[:, None]]), [0, 0, 1]]))[:2]
        rgba = Image.merge("RGBA", (*image.split(), mask))
        warped = np.array(rgba.transform((INPUT, INPUT), Image.AFFINE, tuple(inv.ravel()), resample=Image.BILINEAR))
        x = torch.from_numpy(warped).permute(2, 0, 1).float()
        gain = rng.uniform(0.9, 1.1, 3) * rng.uniform(0.6, 1.4)
        contrast = rng.uniform(0.6, 1.4)
        scale = torch.tensor(gain * contrast / 255.0 / STD, dtype=torch.float32).view(3, 1, 1)
        offset = torch.tensor((gain * 128 * (1 - contrast) / 255.0 - MEAN) / STD, dtype=torch.float32).view(3, 1, 1)
        img, m = x[:3] * scale + offset, x[3:] / 255.0
        if has_mask and rng.random() < self.p_bg:
            u = np.array(self.background_window(background, INPUT, rng))
            img = torch.lerp(torch.from_numpy(u).permute(2, 0, 1).float() * scale + offset, img, m)
        return {"image": img, "mask": m, "has_mask": has_mask}


class _PyRandom:
    """random.Random-like wrapper so webdataset's shuffle uses our seeded generator."""

    def __init__(self, rng):
        self.rng = rng

    def randint(self, a, b):
        return int(self.rng.integers(a, b + 1))

    def random(self):
        return float(self.rng.random())


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime + stime


def dataloader_measure(dataset_cls, paths, batch_size, workers, batches) -> tuple[float, float]:
    """(samples/s, CPU ms per sample over the main process and every worker)."""
    from shards.reader import list_shards
    urls = [str(p) for p in list_shards(paths["source"]) + list_shards(paths["target"])]
    ds = dataset_cls(urls, [str(p) for p in list_shards(paths["backgrounds"])])
    dl = torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers,
                                     prefetch_factor=2 if workers else None)
    return _measure(iter(dl), batches, batch_size)


# -- the DALI loader, the decode bound and the stage profile ---------------------------------
def dali_measure(paths, batch_size, threads, batches) -> tuple[float, float]:
    from shards.pipelines import pretrain_loader
    loader = pretrain_loader(paths["source"], paths["target"], paths["backgrounds"], batch_size=batch_size,
                             input_size=INPUT, num_threads=threads)
    return _measure(_forever(loader), batches, batch_size)


def dali_operators_only_measure(paths, batch_size, threads, batches) -> tuple[float, float]:
    """The same loader with POSEMAE_CPU_IMAGE_OPS=dali: DALI's own warp and blend on the CPU
    (the graph GPU machines run) instead of OpenCV's."""
    previous = os.environ.get("POSEMAE_CPU_IMAGE_OPS")
    os.environ["POSEMAE_CPU_IMAGE_OPS"] = "dali"
    try:
        return dali_measure(paths, batch_size, threads, batches)
    finally:
        if previous is None:
            del os.environ["POSEMAE_CPU_IMAGE_OPS"]
        else:
            os.environ["POSEMAE_CPU_IMAGE_OPS"] = previous


def _forever(loader):
    while True:
        yield from loader


def _measure(batches_iter, batches, batch_size) -> tuple[float, float]:
    """(samples/s, CPU ms per sample over this process and its reader workers)."""
    import psutil
    next(batches_iter)                                          # workers started, first batch out
    pids = [c.pid for c in psutil.Process().children(recursive=True)]
    cpu, t = time.process_time() + sum(map(_cpu_seconds, pids)), time.perf_counter()
    for _ in range(batches):
        next(batches_iter)
    if torch.cuda.is_available():
        torch.cuda.synchronize()                                # GPU copies are asynchronous
    wall = time.perf_counter() - t
    cpu = time.process_time() + sum(map(_cpu_seconds, pids)) - cpu
    return batches * batch_size / wall, 1e3 * cpu / (batches * batch_size)


STAGES = ["decode_full", "decode", "geometry", "normalise", "colour", "composite"]


def stage_pipeline(stage: str, paths, batch_size: int, threads: int):
    """The pre-training graph (source stream) cut after `stage`: decode (image + mask), geometry
    (the 4-channel warp), normalise (no jitter), colour (jitter folded in), composite (background
    window decoded and blended on the swapped samples, as pretrain.composite_and_normalise does).
    `decode_full` is the decode-only bound: image, mask and the whole background JPEG decoded,
    nothing else."""
    from nvidia.dali import fn, pipeline_def, types
    from shards.device import cuda_available
    from shards.pipelines.augment import Augment, colour_normalisation, crop_to_input, with_mask_channel
    from shards.pipelines.shardset import ShardSet
    from shards.pipelines.steps import decode_image, image_size, mask_or_zeros, normalise, reader, warp
    from shards.pipelines.pretrain import PRETRAIN_DRAWS, composite_and_normalise
    gpu = cuda_available()
    src, bgs = ShardSet.at(paths["source"]), ShardSet.at(paths["backgrounds"])
    common = dict(rank=0, world_size=1, seed=0, shuffle=True)

    @pipeline_def(enable_conditionals=True, batch_size=batch_size, num_threads=threads,
                  device_id=0 if gpu else None, prefetch_queue_depth=2)
    def graph():
        jpg, png = reader(src, ["jpg", "mask.png"], name="source", **common)
        bg = reader(bgs, "jpg", name="source_bg", **common)
        hw = image_size(jpg)
        image = decode_image(jpg, gpu)
        mask, has_mask = mask_or_zeros(png, hw)
        if stage == "decode_full":
            return image, mask, decode_image(bg, gpu)
        if stage == "decode":
            return image, mask
        mask = mask.gpu() if gpu else mask
        both = warp(fn.cat(image, mask, axis=2), crop_to_input(hw, INPUT, Augment(), seed=1), INPUT, gpu)
        if stage == "geometry":
            return both
        mean, std = colour_normalisation(Augment() if stage != "normalise" else None, seed=1)
        if stage in ("normalise", "colour"):
            return normalise(both, *with_mask_channel(mean, std))
        swap = fn.random.coin_flip(probability=0.5, dtype=types.BOOL) & has_mask
        # the background window's position: uniform draws, as a sample's own draws give it
        draws = fn.random.uniform(range=[0.0, 1.0], shape=[PRETRAIN_DRAWS], seed=1)
        return composite_and_normalise(both, bg, swap, mean, std, INPUT, gpu, draws)
    return graph()


def stage_measure(stage, paths, batch_size, threads, batches) -> tuple[float, float]:
    return _measure(_runs(stage_pipeline(stage, paths, batch_size, threads)), batches, batch_size)


def _runs(pipe):
    pipe.build()
    while True:
        yield pipe.run()


# -- the global-order reader against the webdataset reader ------------------------------------
READERS = ["reader_webdataset", "reader_ordered"]


def reader_pipeline(kind: str, paths, batch_size: int, threads: int):
    """The pre-training graph's source stream up to its colour stage (decode image + mask, one
    4-channel warp, colour jitter folded into the normalisation), plus the sample key, read by
    `kind`: "webdataset" is today's fn.readers.webdataset (shuffled; DALI's random operators draw
    the augmentation), "ordered" the global order (shards.ordered_source: an external source whose
    `threads` spawned workers read each sample's bytes at its .idx offsets and compute its
    augmentation from its stream position). The graph after the reader is the same."""
    from nvidia.dali import fn, pipeline_def
    from shards.device import cuda_available
    from shards.order import BatchPlan, Catalog, GlobalOrder
    from shards.ordered_source import RankSource, crop_to_input_from, ordered_reader, worker_kwargs
    from shards.pipelines.augment import Augment, colour_normalisation, crop_to_input, with_mask_channel
    from shards.pipelines.shardset import ShardSet
    from shards.pipelines.steps import decode_image, image_size, mask_or_zeros, normalise, reader, sample_key, warp
    gpu, augment = cuda_available(), Augment()
    extra, source, src = {}, None, None
    if kind == "ordered":
        catalog = Catalog.of(paths["source"], ["jpg", "mask.png"])
        source = RankSource(catalog, GlobalOrder(len(catalog), 0, "source"), BatchPlan(batch_size, 1, batch_size),
                            rank=0, augment=augment, input_size=INPUT)
        extra = worker_kwargs(threads)
    else:
        src = ShardSet.at(paths["source"])

    @pipeline_def(enable_conditionals=True, batch_size=batch_size, num_threads=threads,
                  device_id=0 if gpu else None, prefetch_queue_depth=2, **extra)
    def graph():
        if kind == "ordered":
            jpg, png, key, affine, mean, std = ordered_reader(source)
        else:
            jpg, png = reader(src, ["jpg", "mask.png"], name="source", rank=0, world_size=1, seed=0, shuffle=True)
            key = sample_key(jpg)
        hw = image_size(jpg)
        image = decode_image(jpg, gpu)
        mask, _ = mask_or_zeros(png, hw)
        mask = mask.gpu() if gpu else mask
        if kind == "ordered":
            matrix = crop_to_input_from(hw, affine)
        else:
            matrix, (mean, std) = crop_to_input(hw, INPUT, augment, seed=1), colour_normalisation(augment, seed=1)
        both = warp(fn.cat(image, mask, axis=2), matrix, INPUT, gpu)
        return normalise(both, *with_mask_channel(mean, std)), key
    return graph()


def reader_measure(kind, paths, batch_size, threads, batches) -> tuple[float, float]:
    return _measure(_runs(reader_pipeline(kind, paths, batch_size, threads)), batches, batch_size)


# -- memory (own process, so the peak is the loader's alone) ----------------------------------
def memory_probe(paths, batch_size, threads, epochs) -> dict:
    from shards.pipelines import pretrain_loader
    loader = pretrain_loader(paths["source"], paths["target"], paths["backgrounds"], batch_size=batch_size,
                             input_size=INPUT, num_threads=threads)
    peaks, current = [], []
    for _ in range(epochs):
        for batch in loader:
            del batch
        peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        current.append(_rss_mb())
    return {"peak_rss_mb_by_epoch": peaks, "rss_mb_by_epoch": current, "batches_per_epoch": len(loader)}


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- main -------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small data, one round (about a minute and a half)")
    ap.add_argument("--workers", type=int, default=None,
                    help="DataLoader workers = DALI threads per pipeline (default: min(2, cores); "
                         "min(8, cores) with a GPU)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 64 (CPU), 256 (GPU)")
    ap.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = ap.parse_args()
    from shards.device import cuda_available
    gpu = cuda_available()
    batch = args.batch_size or (256 if gpu else 64)
    workers = args.workers or min(8 if gpu else 2, os.cpu_count() or 1)
    if args.memory_probe:
        print(json.dumps(memory_probe(json.loads(args.memory_probe), batch, workers, 5)))
        return
    sizes = (384, 192, 96) if args.quick else (1536, 768, 384)
    rounds, batches = (1, 8) if args.quick else (3, 16)
    runs = {"dali": lambda p: dali_measure(p, batch, workers, batches),
            "dali_operators_only": lambda p: dali_operators_only_measure(p, batch, workers, batches),
            "dataloader_torchvision": lambda p: dataloader_measure(TorchvisionPretrain, p, batch, workers, batches),
            "dataloader_fused": lambda p: dataloader_measure(FusedPretrain, p, batch, workers, batches),
            **{s: (lambda p, s=s: stage_measure(s, p, batch, workers, batches)) for s in STAGES},
            # the reader rows are fast and noisy (+-15% between rounds): three times the batches
            **{r: (lambda p, r=r: reader_measure(r.split("_", 1)[1], p, batch, workers, 3 * batches)) for r in READERS}}
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        t = time.perf_counter()
        paths = make_data(Path(tmp), *sizes)
        print(f"data: {sizes[0]} source, {sizes[1]} target, {sizes[2]} background samples "
              f"({time.perf_counter() - t:.0f} s to write)", flush=True)
        rate = {k: [] for k in runs}
        cpu_ms = {k: [] for k in runs}
        for r in range(rounds):
            for name, run in runs.items():
                samples_s, ms = run(paths)
                rate[name].append(samples_s)
                cpu_ms[name].append(ms)
            print(f"round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.0f}/s {cpu_ms[k][-1]:.2f} ms"
                                                         for k, v in rate.items()), flush=True)
        probe = subprocess.run([sys.executable, "-m", "bench.data_pipeline", "--workers", str(workers),
                                "--batch-size", str(batch), "--memory-probe", json.dumps(paths)], capture_output=True, text=True,
                               cwd=Path(__file__).resolve().parent.parent)
        if probe.returncode != 0:
            raise SystemExit(f"memory probe failed:\n{probe.stderr[-2000:]}")
        memory = json.loads(probe.stdout.strip().splitlines()[-1])

    med_rate = {k: statistics.median(v) for k, v in rate.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu_ms.items()}
    labels = {"decode": "decode (image + mask)", "geometry": "geometry (one 4-channel bilinear warp)",
              "normalise": "normalise (HWC uint8 -> CHW float)", "colour": "colour jitter (folded into normalise)",
              "composite": "composite (background window decode + blend, swapped only)"}
    profile = {labels["decode"]: med_cpu["decode"]}
    for prev, stage in zip(STAGES[1:], STAGES[2:]):
        profile[labels[stage]] = med_cpu[stage] - med_cpu[prev]
    profile["to torch + target stream + loader"] = med_cpu["dali"] - med_cpu["composite"]
    peaks = memory["peak_rss_mb_by_epoch"]
    ratios = {
        "dali_vs_dataloader": med_rate["dali"] / med_rate["dataloader_torchvision"],
        "dali_vs_dataloader_cpu_time": med_cpu["dataloader_torchvision"] / med_cpu["dali"],
        "dali_vs_fused_dataloader": med_rate["dali"] / med_rate["dataloader_fused"],
        "dali_vs_fused_dataloader_cpu_time": med_cpu["dataloader_fused"] / med_cpu["dali"],
        "dali_vs_decode_bound": med_rate["dali"] / med_rate["decode_full"],
        "dali_vs_dali_operators_only": med_rate["dali"] / med_rate["dali_operators_only"],
        "dali_vs_decode_bound_cpu_time": med_cpu["decode_full"] / med_cpu["dali"],
        "peak_rss_epoch5_vs_epoch1": peaks[-1] / peaks[0],
        # the global-order reader (issue: no more than 10% below the webdataset reader)
        "ordered_reader_vs_webdataset_reader": med_rate["reader_ordered"] / med_rate["reader_webdataset"],
        "ordered_reader_vs_webdataset_reader_cpu_time": med_cpu["reader_webdataset"] / med_cpu["reader_ordered"],
        "ordered_reader_vs_webdataset_reader_median_of_rounds": statistics.median(
            o / w for o, w in zip(rate["reader_ordered"], rate["reader_webdataset"])),
    }
    result = {
        "machine": {"cpus": os.cpu_count(), "cuda": gpu, "platform": platform.platform(),
                    "load_avg_1m_at_end": os.getloadavg()[0]},
        "settings": {"batch_size": batch, "input_size": INPUT, "stored_size": STORED, "workers": workers,
                     "dali_pipelines": 2, "dali_threads_per_pipeline": workers, "rounds": rounds,
                     "batches_per_measurement": batches, "quick": args.quick,
                     "samples": dict(zip(["source", "target", "backgrounds"], sizes))},
        "samples_per_s": med_rate, "cpu_ms_per_sample": med_cpu,
        "rounds": {"samples_per_s": rate, "cpu_ms_per_sample": cpu_ms},
        "stage_cpu_ms_per_sample": profile, "memory": memory, "ratios": ratios,
    }
    written = write_results("data_pipeline", args.quick, result)

    print(f"\npre-training input: {INPUT} px from {STORED} px crops, batch {batch}, {workers} workers / DALI threads, "
          f"{'GPU (mixed)' if gpu else 'CPU'}, {os.cpu_count()} cores")
    print(f"{'':42s}{'samples/s':>10s}{'CPU ms/sample':>15s}{'vs torchvision DL':>19s}{'vs fused DL':>13s}")
    base, fused = "dataloader_torchvision", "dataloader_fused"
    for name, key in [("DALI pretrain_loader", "dali"), ("  same, DALI operators only", "dali_operators_only"),
                      ("DataLoader, torchvision", base),
                      ("DataLoader, fused by hand", fused), ("decode-only bound (DALI decoders)", "decode_full")]:
        print(f"{name:42s}{med_rate[key]:10.0f}{med_cpu[key]:15.2f}"
              f"{med_rate[key] / med_rate[base]:18.2f}x{med_rate[key] / med_rate[fused]:12.2f}x")
    print(f"(CPU-time ratios, less disturbed by other load: DALI vs torchvision DL "
          f"{ratios['dali_vs_dataloader_cpu_time']:.2f}x, vs fused DL {ratios['dali_vs_fused_dataloader_cpu_time']:.2f}x)")
    print("\nDALI stage profile, CPU ms per sample (differences of cumulative graphs)")
    for name, ms in profile.items():
        print(f"  {name:60s}{ms:7.2f}")
    print(f"\nsource stream to the colour stage, {workers} DALI threads "
          f"(+ {workers} reader workers for the ordered one)")
    for name in READERS:
        print(f"  {name:42s}{med_rate[name]:8.0f} samples/s{med_cpu[name]:8.2f} CPU ms/sample")
    print(f"  ordered / webdataset: {ratios['ordered_reader_vs_webdataset_reader']:.3f}x samples/s (median of "
          f"per-round ratios {ratios['ordered_reader_vs_webdataset_reader_median_of_rounds']:.3f}x), CPU time "
          f"{ratios['ordered_reader_vs_webdataset_reader_cpu_time']:.3f}x")
    print(f"\npeak RSS after epoch 1: {peaks[0]:.0f} MB, after epoch {len(peaks)}: {peaks[-1]:.0f} MB "
          f"(x{ratios['peak_rss_epoch5_vs_epoch1']:.3f}); RSS by epoch {[round(x) for x in memory['rss_mb_by_epoch']]}")
    print(f"wrote {written}")


if __name__ == "__main__":
    main()
