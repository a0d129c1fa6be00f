"""`trainer demo`: the whole method end to end on embedded synthetic data, on a CPU, in minutes.

Every step runs the real command a researcher would run (printed as it goes), in a fresh process:
  1. dataprep demo      procedural hands: a labelled source in FreiHAND's layout, a target with a
                        different look in RHD's layout, skimage photographs in ImageNet-val layout
  2. dataprep freihand / rhd / imagenet    -> shards
  3. trainer segnet + trainer masks        U-Net on source masks -> predicted target masks
  4. trainer pretrain   plain MAE (--no-fcr --no-backgrounds) and the paper's FCR + backgrounds
  5. trainer finetune   Scratch (--init none), MAE (no AR), full method (FCR+BG pre-training + AR)
  6. trainer evaluate   EPE on a held-out source split (has it learned pose?) and on the target
                        test split (has it adapted?), next to the constant baseline; figures

Models and images are small (a 4-block width-128 ViT, 64 px input, patch 8, a 64-channel head
with one deconvolution): the point is that every part runs on real data paths and that training
measurably learns, not that the numbers match the paper's. The same steps,
larger and with the paper's ablations over several seeds, are bench/uda_synthetic.py.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click

import ds_configs


@dataclass
class DemoScale:
    source: int            # source annotations (FreiHAND layout: 4 image versions each)
    source_test: int       # source evaluation images (held-out poses): the in-domain column
    target_train: int
    target_test: int
    pretrain_epochs: float
    finetune_epochs: float
    segnet_epochs: float = 4
    image_size: tuple = (128, 192)     # rendered source / target image sides (crops are stored at 80 px)


SCALES = {
    # about 7-8 minutes on 2 cores (README): 12,000 source crops, 900 fine-tuning steps of 32
    "demo": DemoScale(source=3000, source_test=200, target_train=1000, target_test=200, pretrain_epochs=1,
                      finetune_epochs=2.4, segnet_epochs=0.15),
    # bench/uda_synthetic: 16,000 source crops, 1400 fine-tuning steps (1100 left Scratch at 0.41x the constant)
    "bench": DemoScale(source=4000, source_test=200, target_train=1000, target_test=200, pretrain_epochs=1,
                       finetune_epochs=2.8, segnet_epochs=0.15),
    "tiny": DemoScale(source=24, source_test=16, target_train=48, target_test=24, pretrain_epochs=1, finetune_epochs=1,
                      segnet_epochs=1),
}
# CPU-scale departures from the paper's recipe (README, bench/README.md): a 4-block width-128 ViT
# ("micro") at 64 px with 8 px patches, one head deconvolution (heatmap stride 4 as in the paper),
# 16 depth bins, and larger batches and learning rates than the paper's per-GPU ones.
MODEL = ["--model", "micro", "--input-size", "64", "--patch-size", "8"]
HEAD = ["--depth-bins", "16", "--head-channels", "64", "--deconv-layers", "1"]
# Fine-tuning without the geometric/colour augmentation: in a few hundred steps it slows learning
# more than it helps (bench/README.md). The paper's recipe augments; the real configs do.
FINETUNE_OPTIONS = ["--no-augment"]
PRETRAIN_CONFIG = Path(ds_configs.__file__).parent / "cpu_demo_pretrain.json"
FINETUNE_CONFIG = Path(ds_configs.__file__).parent / "cpu_demo_finetune.json"

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
CONSTANT = "Mean source pose (constant)"     # trainer.evaluate.CONSTANT_LABEL
DEMO_METHODS = ("Scratch", "MAE", "Ours (FCR+BG+AR)")


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


@dataclass
class Job:
    """One training command of the demo or the benchmark, and the jobs whose output it reads.
    `cost` is a rough duration (any unit) for ordering: longest chain of work first."""
    name: str
    cmd: list
    after: tuple = ()
    cost: float = 1.0


def critical_path(jobs: list[Job]) -> dict[str, float]:
    """Per job: its cost plus the costliest chain of jobs that wait for it."""
    waiting = {j.name: [k for k in jobs if j.name in k.after] for j in jobs}
    memo: dict[str, float] = {}

    def length(job: Job) -> float:
        if job.name not in memo:
            memo[job.name] = job.cost + max((length(k) for k in waiting[job.name]), default=0.0)
        return memo[job.name]
    return {j.name: length(j) for j in jobs}


def run_jobs(jobs: list[Job], log: Path, parallel: int = 2) -> dict[str, float]:
    """Run `jobs`, `parallel` at a time, each as soon as the jobs it needs have finished, with
    cores // parallel threads each. At this model size a training step parallelises poorly
    (2 threads: 1.1-1.3x one thread), so two 1-thread jobs finish 1.6-1.8x sooner on 2 cores than one
    after another (bench/README.md). Each job writes <log dir>/logs/<name>.log, appended to `log`
    when it ends; the first failure stops the others and reports its output. Ready jobs start in
    order of their critical path, so that a long chain (pre-training -> fine-tuning with AR) is
    not left to run alone at the end. Returns seconds per job."""
    logs = log.parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // parallel)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    priority = critical_path(jobs)
    pending, running, seconds = sorted(jobs, key=lambda j: -priority[j.name]), {}, {}
    try:
        while pending or running:
            for job in list(pending):
                if len(running) < parallel and all(dep in seconds for dep in job.after):
                    pending.remove(job)
                    shown = " ".join(shlex.quote(str(c)) for c in job.cmd)
                    click.echo(f"$ {shown}", err=True)
                    (logs / f"{job.name}.log").parent.mkdir(parents=True, exist_ok=True)   # "seed0/ft_mae"
                    out = open(logs / f"{job.name}.log", "w")
                    out.write(f"$ {shown}\n")
                    out.flush()
                    proc = subprocess.Popen([str(c) for c in job.cmd], stdout=out, stderr=subprocess.STDOUT, env=env)
                    running[job.name] = (job, proc, out, time.perf_counter())
            if pending and not running:
                raise click.ClickException(f"jobs {[j.name for j in pending]} wait for jobs that do not exist")
            time.sleep(0.5)
            for name, (job, proc, out, start) in list(running.items()):
                if proc.poll() is None:
                    continue
                out.close()
                del running[name]
                text = (logs / f"{name}.log").read_text()
                with open(log, "a") as f:
                    f.write("\n" + text)
                if proc.returncode != 0:
                    tail = "\n".join(text.splitlines()[-25:])
                    raise click.ClickException(f"{name} failed ({proc.returncode}): {job.cmd}\n{tail}")
                seconds[name] = time.perf_counter() - start
                click.echo(f"  {name} done in {seconds[name]:.1f} s", err=True)
    finally:
        for _, proc, out, _ in running.values():
            proc.kill()
            out.close()
    return seconds


DATAPREP = [sys.executable, "-m", "dataprep.cli"]
TRAINER = [sys.executable, "-m", "trainer"]


@dataclass
class DemoData:
    source: Path          # labelled source shards (train)
    source_test: Path     # held-out source shards (other poses): the in-domain test
    target: Path          # target train shards with predicted masks (labels unused)
    target_test: Path     # target test shards (labels used only by evaluate)
    backgrounds: Path


def prepare_data(out: Path, scale: DemoScale, seed: int, log: Path, times: dict) -> DemoData:
    """Generate the raw trees, convert them, train the U-Net and predict target masks."""
    raw, shards, runs = out / "raw", out / "shards", out / "runs"
    crop = ["--crop-size", "80", "--workers", "2"]
    data = DemoData(shards / "source" / "train", shards / "source" / "test", shards / "target_masked" / "train",
                    shards / "target" / "test", shards / "backgrounds" / "train")
    if (data.target / "manifest.json").exists():
        return data   # already prepared (a rerun of the demo or the benchmark reuses it)
    times["generate"] = run(DATAPREP + ["demo", raw, "--source-size", scale.source, "--source-test", scale.source_test,
                                        "--target-train", scale.target_train, "--target-test", scale.target_test,
                                        "--image-size", *scale.image_size, "--seed", seed], log)
    times["convert"] = sum([
        # 8 source training shards (--shard-count is samples per shard), so that segnet can hold one out
        run(DATAPREP + ["freihand", raw / "FreiHAND_pub_v2", shards / "source", "--splits", "train,test",
                        "--shard-count", max(8, scale.source // 2), *crop], log),
        run(DATAPREP + ["rhd", raw, shards / "target", *crop], log),
        run(DATAPREP + ["imagenet", raw / "ILSVRC2012_val", shards / "backgrounds", "--crop-size", 96], log),
    ])
    times["segnet"] = run(TRAINER + ["segnet", "--source", data.source, "--run-dir", runs / "segnet",
                                     "--input-size", 64, "--base", 16, "--epochs", scale.segnet_epochs,
                                     "--warmup-epochs", 0.1, "--seed", seed], log)
    # docs/method.md: target masks always come from the U-Net, even where the dataset has its own (RHD does)
    times["masks"] = run(TRAINER + ["masks", "--model", runs / "segnet", "--in", shards / "target" / "train",
                                    "--out", data.target, "--replace-existing"], log)
    return data


def pretrain_job(data: DemoData, variant: str, run_dir: Path, scale: DemoScale, seed: int, name: str) -> Job:
    cmd = TRAINER + ["pretrain", "--source", data.source, "--target", data.target, "--epochs", scale.pretrain_epochs,
                     "--warmup-epochs", 0.2, "--seed", seed, *MODEL, "--decoder-dim", 128, "--decoder-heads", 4,
                     "--ds-config", PRETRAIN_CONFIG, *PRETRAIN_VARIANTS[variant], "--run-dir", run_dir]
    if "--no-backgrounds" not in PRETRAIN_VARIANTS[variant]:
        cmd += ["--backgrounds", data.backgrounds]
    return Job(name, cmd, cost=1.0)


def finetune_job(data: DemoData, method: str, init: Path | None, run_dir: Path, scale: DemoScale, seed: int,
                 name: str, after: tuple = ()) -> Job:
    _, flags = METHODS[method]
    cmd = TRAINER + ["finetune", "--source", data.source, "--epochs", scale.finetune_epochs, "--warmup-epochs", 0.05,
                     "--seed", seed, *MODEL, *HEAD, *FINETUNE_OPTIONS, "--ds-config", FINETUNE_CONFIG,
                     "--init", init or "none", *flags, "--run-dir", run_dir]
    if "--no-ar" not in flags and "--source-only" not in flags:
        cmd += ["--target", data.target]
        return Job(name, cmd, after, cost=4.0)      # the target batch through E and A: ~1.5x the steps
    return Job(name, cmd, after, cost=2.5)


def method_jobs(data: DemoData, methods, runs: Path, scale: DemoScale, seed: int, prefix: str = "") -> tuple[list, dict]:
    """The pre-training and fine-tuning jobs of `methods` (each pre-training variant once) ->
    (jobs, {method: fine-tuning run directory})."""
    variants = [v for v in PRETRAIN_VARIANTS if any(METHODS[m][0] == v for m in methods)]
    jobs = [pretrain_job(data, v, runs / f"pretrain_{v}", scale, seed, f"{prefix}pretrain_{v}") for v in variants]
    finetuned = {}
    for method in methods:
        variant = METHODS[method][0]
        run_dir = runs / f"ft_{short_name(method)}"
        after = (f"{prefix}pretrain_{variant}",) if variant else ()
        jobs.append(finetune_job(data, method, runs / f"pretrain_{variant}" if variant else None, run_dir, scale, seed,
                                 prefix + run_dir.name, after))
        finetuned[method] = run_dir
    return jobs, finetuned


def short_name(method: str) -> str:
    return method.split(" (")[0].replace("/", "").replace(" ", "_").lower()


def evaluate(runs: dict[str, Path], shards: list[Path], out: Path, log: Path) -> dict:
    cmd = TRAINER + ["evaluate", "--out", out]
    for s in shards:
        cmd += ["--shards", s]
    for name, run_dir in runs.items():
        cmd += ["--ckpt", run_dir, "--name", name]
    run(cmd, log)
    return json.loads((out / "results.json").read_text())


def epe_by_split(results: dict, data: DemoData) -> dict[str, dict[str, float]]:
    """{method: {"source_epe_mm", "target_epe_mm", "target_pa_epe_mm", "target_auc_20_50"}} from
    trainer evaluate's results.json (the constant baseline is one of the methods)."""
    column = {str(data.source_test): "source", str(data.target_test): "target"}
    out: dict[str, dict[str, float]] = {}
    for e in results["evaluations"]:
        split = column[e["shards"][0]]
        row = out.setdefault(e["method"], {})
        row[f"{split}_epe_mm"] = e["metrics"]["epe"]
        if split == "target":
            row["target_pa_epe_mm"], row["target_auc_20_50"] = e["metrics"]["pa_epe"], e["metrics"]["auc_20_50"]
    return out


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


def markdown_table(rows: dict[str, dict[str, float]]) -> str:
    lines = ["| Method | source test EPE (mm) | target test EPE (mm) | target PA-EPE (mm) | target 3D PCK AUC 20-50 mm |",
             "|:---|---:|---:|---:|---:|"]
    for method, r in rows.items():
        lines.append(f"| {method} | {r['source_epe_mm']:.1f} | {r['target_epe_mm']:.1f} | {r['target_pa_epe_mm']:.1f} "
                     f"| {r['target_auc_20_50']:.3f} |")
    return "\n".join(lines)


@click.command("demo")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo_out"),
              show_default=True)
@click.option("--scale", "scale_name", type=click.Choice(sorted(SCALES)), default="demo", show_default=True,
              help="'tiny' only checks that every step runs")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--parallel", type=int, default=2, show_default=True,
              help="training jobs at a time (each gets cores / parallel threads)")
def cli(out_dir: Path, scale_name: str, seed: int, parallel: int):
    """Run the whole method on embedded synthetic data (no datasets, no GPU needed)."""
    scale = SCALES[scale_name]
    out_dir.mkdir(parents=True, exist_ok=True)
    log, runs = out_dir / "demo.log", out_dir / "runs"
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    data = prepare_data(out_dir, scale, seed, log, times)
    jobs, finetuned = method_jobs(data, DEMO_METHODS, runs, scale, seed)
    times.update(run_jobs(jobs, log, parallel))
    results = evaluate(finetuned, [data.source_test, data.target_test], out_dir / "results", log)
    rows = epe_by_split(results, data)
    total = time.perf_counter() - t0
    counts = {e["dataset"]: e["metrics"]["num_samples"] for e in results["evaluations"]}
    click.echo(f"\nRoot-relative 3D error at the wrist: source test = {counts.get('freihand')} held-out poses of the "
               f"labelled (FreiHAND-layout) domain; target test = {counts.get('rhd')} hands of the unlabelled "
               "(RHD-layout) domain, never labelled in training.\n")
    click.echo(markdown_table(rows))
    iou = target_mask_iou(out_dir / "shards" / "target" / "train", data.target)
    click.echo(f"\ntarget masks from the U-Net: mean IoU {iou:.3f} against the generator's exact masks")
    click.echo("step times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()) + f"; total {total:.0f}")
    summary = {"mean_pose": {k: rows[CONSTANT][k] for k in ("source_epe_mm", "target_epe_mm")},
               "methods": {m: {k: r[k] for k in ("source_epe_mm", "target_epe_mm")} for m, r in rows.items()
                           if m != CONSTANT},
               "seconds": total, "step_seconds": times, "target_mask_iou": iou, "scale": scale_name, "seed": seed}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    click.echo(f"summary: {out_dir / 'summary.json'}; tables, PCK curves, contact sheets: {out_dir / 'results'}; "
               f"runs (checkpoints, metrics, figures): {runs}; every command and its output: {log}")
