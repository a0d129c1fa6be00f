"""`trainer demo`: the whole method end to end on embedded synthetic data, on a CPU, in minutes.

Every step runs the real command a researcher would run (printed as it goes), in a fresh process:
  1. dataprep demo      procedural hands: a labelled source in FreiHAND's layout, a target with a
                        different look in RHD's layout, skimage photographs in ImageNet-val layout
  2. dataprep freihand / rhd / imagenet    -> shards
  3. trainer segnet + trainer masks        U-Net on source masks -> predicted target masks
  4. trainer pretrain   twice: plain MAE (--no-fcr --no-backgrounds) and the paper's FCR + backgrounds
  5. trainer finetune   Scratch (--init none), MAE (no AR), full method (FCR+BG pre-training + AR)
  6. trainer evaluate   Table-1-style EPE / PCK AUC on the target test split, figures

Sizes are tiny (ViT-Tiny, 64 px input, patch 8) so the point is that every part runs, not that
the numbers match the paper.
"""
from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

import click

SIZES = {
    # name: (source annotations (x4 image versions), target train, target test, pretrain epochs, finetune epochs)
    "demo": (160, 480, 160, 6, 12),
    "tiny": (24, 48, 24, 1, 1),
}


def run(cmd: list[str], log: Path) -> float:
    """Run one pipeline step like a user would; stop the demo with its output if it fails."""
    shown = " ".join(shlex.quote(c) for c in cmd)
    click.echo(f"\n$ {shown}", err=True)
    t = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n$ {shown}\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    dt = time.perf_counter() - t
    if proc.returncode != 0:
        tail = log.read_text().splitlines()[-25:]
        raise click.ClickException(f"step failed ({proc.returncode}): {shown}\n" + "\n".join(tail))
    click.echo(f"  done in {dt:.1f} s", err=True)
    return dt


@click.command("demo")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo_out"),
              show_default=True)
@click.option("--size", type=click.Choice(sorted(SIZES)), default="demo", show_default=True,
              help="'tiny' only checks that every step runs")
@click.option("--seed", type=int, default=0, show_default=True)
def cli(out_dir: Path, size: str, seed: int):
    """Run the whole method on embedded synthetic data (no datasets, no GPU needed)."""
    n_src, n_tgt, n_test, pre_epochs, ft_epochs = SIZES[size]
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir / "demo.log"
    py = sys.executable
    dataprep = [py, "-m", "dataprep.cli"]
    trainer = [py, "-m", "trainer"]
    raw, shards, runs = out_dir / "raw", out_dir / "shards", out_dir / "runs"
    crop = ["--crop-size", "80", "--workers", "2"]
    model = ["--model", "tiny", "--input-size", "64", "--patch-size", "8", "--seed", str(seed)]
    times = {}
    t0 = time.perf_counter()

    times["generate"] = run(dataprep + ["demo", str(raw), "--source-size", str(n_src), "--source-test", "8",
                                        "--target-train", str(n_tgt), "--target-test", str(n_test),
                                        "--seed", str(seed)], log)
    times["convert"] = sum([
        run(dataprep + ["freihand", str(raw / "FreiHAND_pub_v2"), str(shards / "source"), "--splits", "train",
             "--shard-count", str(max(8, n_src // 2)), *crop], log),   # ~8 shards: segnet holds one out
        run(dataprep + ["rhd", str(raw), str(shards / "target"), *crop], log),
        run(dataprep + ["imagenet", str(raw / "ILSVRC2012_val"), str(shards / "backgrounds"), "--crop-size", "96"], log),
    ])
    source, target_test = shards / "source" / "train", shards / "target" / "test"
    target = shards / "target_masked" / "train"
    times["segnet"] = run(trainer + ["segnet", "--source", str(source), "--run-dir", str(runs / "segnet"),
                                     "--input-size", "64", "--base", "16", "--epochs", "3", "--seed", str(seed)], log)
    times["masks"] = run(trainer + ["masks", "--model", str(runs / "segnet"), "--in", str(shards / "target" / "train"),
                                    "--out", str(target)], log)
    pre = ["--source", str(source), "--target", str(target), "--epochs", str(pre_epochs), "--warmup-epochs", "1", *model]
    times["pretrain_mae"] = run(trainer + ["pretrain", *pre, "--no-fcr", "--no-backgrounds",
                                           "--run-dir", str(runs / "pretrain_mae")], log)
    times["pretrain_full"] = run(trainer + ["pretrain", *pre, "--backgrounds", str(shards / "backgrounds" / "train"),
                                            "--run-dir", str(runs / "pretrain_full")], log)
    ft = ["--source", str(source), "--epochs", str(ft_epochs), "--warmup-epochs", "1", "--depth-bins", "16", *model]
    times["finetune_scratch"] = run(trainer + ["finetune", *ft, "--init", "none", "--source-only",
                                               "--run-dir", str(runs / "ft_scratch")], log)
    times["finetune_mae"] = run(trainer + ["finetune", *ft, "--init", str(runs / "pretrain_mae"), "--no-ar",
                                           "--run-dir", str(runs / "ft_mae")], log)
    times["finetune_full"] = run(trainer + ["finetune", *ft, "--init", str(runs / "pretrain_full"),
                                            "--target", str(target), "--run-dir", str(runs / "ft_full")], log)
    times["evaluate"] = run(trainer + ["evaluate", "--ckpt", str(runs / "ft_scratch"), "--name", "Scratch",
                                       "--ckpt", str(runs / "ft_mae"), "--name", "MAE",
                                       "--ckpt", str(runs / "ft_full"), "--name", "Ours (FCR+BG+AR)",
                                       "--shards", str(target_test), "--out", str(out_dir / "results")], log)
    total = time.perf_counter() - t0
    table = (out_dir / "results" / "results.md").read_text()
    click.echo("\nTarget test split (synthetic RHD-layout hands), root-relative 3D error:\n")
    click.echo(table)
    click.echo("step times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()) + f"; total {total:.0f}")
    click.echo(f"figures and numbers: {out_dir / 'results'}; runs: {runs}; full log: {log}")
