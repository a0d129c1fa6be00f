"""`trainer demo`: the whole method end to end on embedded synthetic data, on a CPU, in minutes.

Every step runs the real command a researcher would run (printed as it goes), in a fresh process:
  1. dataprep demo      procedural hands: a labelled source in FreiHAND's layout, a target with a
                        different look in RHD's layout, skimage photographs in ImageNet-val layout
  2. dataprep freihand / rhd / imagenet    -> shards
  3. trainer segnet + trainer masks        U-Net on source masks -> predicted target masks
  4. trainer pretrain   plain MAE (--no-fcr --no-backgrounds) and the paper's FCR + backgrounds
  5. trainer finetune   Scratch (--init none), MAE (no AR), full method (FCR+BG pre-training + AR)
  6. trainer evaluate   Table-1-style EPE / PCK AUC on the target test split, figures

Models and images are tiny (ViT-Tiny, 64 px input, patch 8, a 64-channel head): the point is
that every part runs on real data paths, not that the numbers match the paper. The same steps,
larger and with the paper's ablations over several seeds, are bench/uda_synthetic.py.
"""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click


@dataclass
class DemoScale:
    source: int            # source annotations (FreiHAND layout: 4 image versions each)
    target_train: int
    target_test: int
    pretrain_epochs: float
    finetune_epochs: float
    segnet_epochs: float = 4


SCALES = {
    "demo": DemoScale(source=160, target_train=400, target_test=200, pretrain_epochs=4, finetune_epochs=5),
    "tiny": DemoScale(source=24, target_train=48, target_test=24, pretrain_epochs=1, finetune_epochs=1, segnet_epochs=2),
}
MODEL = ["--model", "tiny", "--input-size", "64", "--patch-size", "8"]
HEAD = ["--depth-bins", "16", "--head-channels", "64"]

# The paper's ablations (Tables 3-4): pre-training flags and fine-tuning flags per method.
PRETRAIN_VARIANTS = {
    "mae": ["--no-fcr", "--no-backgrounds"],
    "no_bg": ["--no-backgrounds"],
    "no_fcr": ["--no-fcr"],
    "full": [],
}
METHODS = {   # method: (pre-training variant or None for scratch, fine-tuning flags)
    "Scratch": (None, ["--source-only"]),
    "MAE": ("mae", ["--no-ar"]),
    "w/o BG": ("no_bg", []),
    "w/o FCR": ("no_fcr", []),
    "w/o AR": ("full", ["--no-ar"]),
    "Ours (FCR+BG+AR)": ("full", []),
}


def run(cmd: list[str], log: Path) -> float:
    """Run one step as a user would; stop with its output if it fails. Returns seconds."""
    shown = " ".join(shlex.quote(str(c)) for c in cmd)
    click.echo(f"$ {shown}", err=True)
    t = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n$ {shown}\n")
        f.flush()
        proc = subprocess.run([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT)
    dt = time.perf_counter() - t
    if proc.returncode != 0:
        tail = log.read_text().splitlines()[-25:]
        raise click.ClickException(f"step failed ({proc.returncode}): {shown}\n" + "\n".join(tail))
    click.echo(f"  done in {dt:.1f} s", err=True)
    return dt


DATAPREP = [sys.executable, "-m", "dataprep.cli"]
TRAINER = [sys.executable, "-m", "trainer"]


@dataclass
class DemoData:
    source: Path          # labelled source shards (train)
    target: Path          # target train shards with predicted masks (labels unused)
    target_test: Path     # target test shards (labels used only by evaluate)
    backgrounds: Path


def prepare_data(out: Path, scale: DemoScale, seed: int, log: Path, times: dict) -> DemoData:
    """Generate the raw trees, convert them, train the U-Net and predict target masks."""
    raw, shards, runs = out / "raw", out / "shards", out / "runs"
    crop = ["--crop-size", "80", "--workers", "2"]
    data = DemoData(shards / "source" / "train", shards / "target_masked" / "train",
                    shards / "target" / "test", shards / "backgrounds" / "train")
    if (data.target / "manifest.json").exists():
        return data   # already prepared (a rerun of the demo or the benchmark reuses it)
    times["generate"] = run(DATAPREP + ["demo", raw, "--source-size", scale.source, "--source-test", 8,
                                        "--target-train", scale.target_train, "--target-test", scale.target_test,
                                        "--seed", seed], log)
    times["convert"] = sum([
        # ~8 source shards, so that segnet can hold one out for its IoU
        run(DATAPREP + ["freihand", raw / "FreiHAND_pub_v2", shards / "source", "--splits", "train",
                        "--shard-count", max(8, scale.source // 2), *crop], log),
        run(DATAPREP + ["rhd", raw, shards / "target", *crop], log),
        run(DATAPREP + ["imagenet", raw / "ILSVRC2012_val", shards / "backgrounds", "--crop-size", 96], log),
    ])
    times["segnet"] = run(TRAINER + ["segnet", "--source", data.source, "--run-dir", runs / "segnet",
                                     "--input-size", 64, "--base", 16, "--epochs", scale.segnet_epochs,
                                     "--seed", seed], log)
    # METHOD.md: target masks always come from the U-Net, even where the dataset has its own (RHD does)
    times["masks"] = run(TRAINER + ["masks", "--model", runs / "segnet", "--in", shards / "target" / "train",
                                    "--out", data.target, "--replace-existing"], log)
    return data


def pretrain(data: DemoData, variant: str, run_dir: Path, scale: DemoScale, seed: int, log: Path) -> float:
    cmd = TRAINER + ["pretrain", "--source", data.source, "--target", data.target, "--epochs", scale.pretrain_epochs,
                     "--warmup-epochs", 1, "--seed", seed, *MODEL, *PRETRAIN_VARIANTS[variant], "--run-dir", run_dir]
    if "--no-backgrounds" not in PRETRAIN_VARIANTS[variant]:
        cmd += ["--backgrounds", data.backgrounds]
    return run(cmd, log)


def finetune(data: DemoData, method: str, init: Path | None, run_dir: Path, scale: DemoScale, seed: int,
             log: Path) -> float:
    _, flags = METHODS[method]
    cmd = TRAINER + ["finetune", "--source", data.source, "--epochs", scale.finetune_epochs, "--warmup-epochs", 1,
                     "--seed", seed, *MODEL, *HEAD, "--init", init or "none", *flags, "--run-dir", run_dir]
    if "--no-ar" not in flags and "--source-only" not in flags:
        cmd += ["--target", data.target]
    return run(cmd, log)


def evaluate(runs: dict[str, Path], shards: Path, out: Path, log: Path) -> dict:
    cmd = TRAINER + ["evaluate", "--shards", shards, "--out", out]
    for name, run_dir in runs.items():
        cmd += ["--ckpt", run_dir, "--name", name]
    run(cmd, log)
    return json.loads((out / "results.json").read_text())


def target_mask_iou(exact: Path, predicted: Path) -> float:
    """Mean IoU of the U-Net's target masks against the generator's exact ones (the demo can
    measure what a real target set cannot)."""
    from shards import iter_samples
    truth = {s.key: s.mask > 127 for s in iter_samples(exact) if s.mask is not None}
    ious = []
    for s in iter_samples(predicted):
        if s.key in truth and s.mask is not None:
            pred, gt = s.mask > 127, truth[s.key]
            union = (pred | gt).sum()
            ious.append((pred & gt).sum() / union if union else 1.0)
    return float(sum(ious) / len(ious)) if ious else float("nan")


def summary_rows(results: dict) -> list[tuple[str, float, float, float]]:
    """(method, EPE mm, PA-EPE mm, AUC 20-50 mm) per evaluated checkpoint."""
    return [(e["method"], e["metrics"]["epe"], e["metrics"]["pa_epe"], e["metrics"]["auc_20_50"])
            for e in results["evaluations"]]


@click.command("demo")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo_out"),
              show_default=True)
@click.option("--scale", "scale_name", type=click.Choice(sorted(SCALES)), default="demo", show_default=True,
              help="'tiny' only checks that every step runs")
@click.option("--seed", type=int, default=0, show_default=True)
def cli(out_dir: Path, scale_name: str, seed: int):
    """Run the whole method on embedded synthetic data (no datasets, no GPU needed)."""
    scale = SCALES[scale_name]
    out_dir.mkdir(parents=True, exist_ok=True)
    log, runs = out_dir / "demo.log", out_dir / "runs"
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    data = prepare_data(out_dir, scale, seed, log, times)
    for variant in ("mae", "full"):
        times[f"pretrain_{variant}"] = pretrain(data, variant, runs / f"pretrain_{variant}", scale, seed, log)
    finetuned = {}
    for method, name in (("Scratch", "ft_scratch"), ("MAE", "ft_mae"), ("Ours (FCR+BG+AR)", "ft_full")):
        variant = METHODS[method][0]
        times[name] = finetune(data, method, runs / f"pretrain_{variant}" if variant else None, runs / name,
                               scale, seed, log)
        finetuned[method] = runs / name
    results = evaluate(finetuned, data.target_test, out_dir / "results", log)
    total = time.perf_counter() - t0
    n_test = results["evaluations"][0]["metrics"]["num_samples"]
    click.echo(f"\nTarget test split ({n_test} synthetic RHD-layout hands, never labelled in training); "
               "root-relative 3D error at the wrist:\n")
    click.echo(f"| Method | EPE (mm) | PA-EPE (mm) | 3D PCK AUC 20-50 mm |\n|:---|---:|---:|---:|")
    for method, epe, pa, auc in summary_rows(results):
        click.echo(f"| {method} | {epe:.1f} | {pa:.1f} | {auc:.3f} |")
    iou = target_mask_iou(out_dir / "shards" / "target" / "train", data.target)
    click.echo(f"\ntarget masks from the U-Net: mean IoU {iou:.3f} against the generator's exact masks")
    click.echo("step times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()) + f"; total {total:.0f}")
    click.echo(f"tables, PCK curves, contact sheets: {out_dir / 'results'}; runs (checkpoints, metrics, "
               f"figures): {runs}; every command and its output: {log}")
