"""A run: its settings, distributed world, DeepSpeed config and run directory (config.json,
metrics.jsonl), and the checks that a --resume continues the same run (on any world size: the
global batch is the run's, the data position the global step)."""
from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from shards.device import cuda_available
from shards.files import atomic_write_json
from trainer.checkpoints import CHECKPOINTS, META_FILE, UNIVERSAL, latest_tag
from trainer.errors import ConfigError

from .config import REPO_ROOT, add_monitors, read_ds_config
from .distributed import Dist, init_distributed
from .options import TrainSettings


# Options that may change between a run and its --resume: they steer bookkeeping, not the maths.
# run_dir too: a run moved to a disk with room (after a full one) continues where it is now.
# ds_config: its path may change, its content is compared (RESUMABLE_DS_KEYS). mean_pose (fine-
# tuning's constant baseline) is computed from the source: a resume with --skip-bad-samples after a
# shard went bad leaves its unreadable samples out of it.
RESUMABLE_OPTIONS = {"resume", "max_steps", "log_every", "figure_every", "checkpoint_every", "keep_checkpoints",
                     "log_keys", "wandb", "run_dir", "skip_bad_samples", "dist_timeout", "ds_config", "mean_pose"}
# DeepSpeed config entries a resume may change: the micro-batch (memory per device on the new
# machines; the global batch stays the run's and the accumulation is re-derived) and the monitors
# (they point into the run directory).
RESUMABLE_DS_KEYS = {"train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size",
                     "csv_monitor", "tensorboard", "wandb"}


def log_images(run, images: dict, step: int) -> None:
    """Figures (PIL images) into TensorBoard beside DeepSpeed's scalars (same directory, same
    x-axis: samples seen) and, with --wandb, into W&B. Rank 0 calls it, as it makes the figures.
    A writer per call: figures are rare, and a killed run loses none that were written."""
    tb = run.ds_config.get("tensorboard", {})
    if tb.get("enabled"):
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(Path(tb["output_path"]) / tb["job_name"]))
        try:
            for name, image in images.items():
                writer.add_image(f"Figures/{name}", np.asarray(image.convert("RGB")), step, dataformats="HWC")
        finally:
            writer.close()
    if run.ds_config.get("wandb", {}).get("enabled"):
        import wandb
        if wandb.run is not None:   # DeepSpeed's W&B monitor started it on rank 0
            wandb.log({f"Figures/{name}": wandb.Image(image) for name, image in images.items()}, step=step)


@dataclass
class StepOutput:
    loss: torch.Tensor                        # scalar, what backward() runs on
    metrics: dict = field(default_factory=dict)   # name -> float/tensor, averaged over the step
    keys: list = field(default_factory=list)  # sample keys of the batch (named on a NaN)


@dataclass
class Run:
    stage: str
    settings: TrainSettings
    options: dict
    model_signature: dict
    dist: Dist
    ds_config: dict
    resume_tag: str | None = None
    resumed_world_size: int | None = None     # the world size the resumed checkpoint was written on
    load_dir: Path | None = None              # where DeepSpeed loads the resumed tag from (a universal copy)

    @property
    def run_dir(self) -> Path:
        return self.settings.run_dir

    @property
    def checkpoint_dir(self) -> Path:
        return self.settings.run_dir / CHECKPOINTS

    @property
    def micro_batch(self) -> int:
        return self.ds_config["train_micro_batch_size_per_gpu"]

    @property
    def global_batch(self) -> int:
        """Samples per optimizer step over all ranks: the run's, whatever the world size now."""
        return self.ds_config["train_batch_size"]

    @property
    def accumulation(self) -> int:
        return self.ds_config["gradient_accumulation_steps"]

    def log(self, record: dict) -> None:
        """Append one line to metrics.jsonl (rank 0)."""
        if self.dist.is_main:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"time": round(time.time(), 3), **record}, default=str) + "\n")


def refuse_changes(what: str, recorded: dict, now: dict, resumable: set) -> None:
    """One ConfigError naming every entry (outside `resumable`) that differs, old -> new."""
    was, now = ({k: v for k, v in json.loads(json.dumps(d, default=str)).items() if k not in resumable}
                for d in (recorded, now))
    changed = sorted(k for k in set(was) | set(now) if was.get(k) != now.get(k))
    if changed:
        raise ConfigError(f"{what}: " + ", ".join(f"{k}: {was.get(k)!r} -> {now.get(k)!r}" for k in changed))


def start_run(stage: str, settings: TrainSettings, options: dict, model_signature: dict) -> Run:
    """Distributed start-up, the checked DeepSpeed config and the run directory. Fresh runs
    write config.json; --resume checks the checkpoint and the options against the run's own."""
    dist = init_distributed(settings.dist_timeout)
    tag = latest_tag(settings.run_dir / CHECKPOINTS)
    recorded_path = settings.run_dir / "config.json"
    global_batch = None
    if tag is not None and settings.resume and recorded_path.is_file():
        # the global batch is the run's: on another world size the accumulation is re-derived
        global_batch = json.loads(recorded_path.read_text())["ds_config"]["train_batch_size"]
    ds_config = add_monitors(read_ds_config(settings.ds_config, dist.world_size, global_batch=global_batch),
                             settings.run_dir, settings.wandb)
    all_options = {**options, **asdict(settings)}
    run = Run(stage, settings, all_options, model_signature, dist, ds_config)
    if tag is not None and not settings.resume:
        raise ConfigError(f"{run.checkpoint_dir} already holds checkpoints (latest {tag}): pass --resume "
                          "to continue that run, or choose another --run-dir")
    if tag is not None:
        meta_path = run.checkpoint_dir / tag / META_FILE
        if not meta_path.is_file():
            raise ConfigError(f"{meta_path} missing: {run.checkpoint_dir / tag} was not written by these trainers")
        meta = json.loads(meta_path.read_text())
        if meta["stage"] != stage or meta["model"] != model_signature:
            raise ConfigError(f"checkpoint {run.checkpoint_dir / tag} is a {meta['stage']} checkpoint of "
                              f"{meta['model']}; this run builds a {stage} model {model_signature}")
        recorded = json.loads((settings.run_dir / "config.json").read_text())
        refuse_changes(f"--resume of {settings.run_dir} with other options than the run's config.json",
                       recorded["options"], all_options, RESUMABLE_OPTIONS)
        refuse_changes(f"--resume of {settings.run_dir} with a DeepSpeed config ({settings.ds_config}) that differs "
                       "from the run's (config.json) in more than the micro-batch", recorded["ds_config"], ds_config,
                       RESUMABLE_DS_KEYS)
        zero_stage = ds_config.get("zero_optimization", {}).get("stage", 0)
        if meta["world_size"] != dist.world_size and zero_stage > 0:
            # ZeRO partitions the optimizer state per rank (stage 0 keeps it whole in the model
            # file, which loads on any world size): DeepSpeed's universal checkpoint re-partitions it
            run.load_dir = universal_checkpoint(run.checkpoint_dir, tag, dist)
            ds_config.setdefault("checkpoint", {})["load_universal"] = True
        run.resumed_world_size = meta["world_size"]
        run.resume_tag = tag
    elif dist.is_main:
        from trainer.report import code_version
        settings.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("metrics.jsonl",):  # a fresh run in a directory without checkpoints
            (settings.run_dir / stale).unlink(missing_ok=True)
        atomic_write_json(settings.run_dir / "config.json", {
            "stage": stage, "options": all_options, "model": model_signature, "ds_config": ds_config,
            "world_size": dist.world_size, "code_version": code_version(REPO_ROOT),
            "command": sys.argv, "torch": torch.__version__, "deepspeed": _deepspeed_version(),
            "device": "cuda" if cuda_available() else "cpu"}, default=str)
    torch.distributed.barrier()
    return run


def universal_checkpoint(checkpoint_dir: Path, tag: str, dist: Dist) -> Path:
    """DeepSpeed's universal form of checkpoint `tag` (ZeRO state re-partitionable over any world
    size), written once by rank 0 into checkpoint_dir/universal/<tag> with DeepSpeed's own
    converter; returns that load directory. A conversion that fails is one ConfigError on every
    rank with the converter's last words and the command."""
    import subprocess
    out = checkpoint_dir / UNIVERSAL / tag
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(checkpoint_dir / tag),
           "--output_folder", str(out), "--inject_missing_state"]
    error = None
    if dist.is_main and not (out / ".complete").is_file():
        import shutil
        shutil.rmtree(out, ignore_errors=True)
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode == 0:
            (out / ".complete").write_text("")
        else:
            error = (done.stderr or done.stdout).strip().splitlines()[-3:]
    result = [error]
    torch.distributed.broadcast_object_list(result, src=0)
    if result[0] is not None:
        raise ConfigError(f"could not convert {checkpoint_dir / tag} to DeepSpeed's universal checkpoint for a resume "
                          f"on {dist.world_size} ranks ({' / '.join(result[0])}); command: {' '.join(cmd)}")
    return out.parent


def _deepspeed_version() -> str:
    import deepspeed
    return deepspeed.__version__


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def resume_hint(run: Run) -> str:
    latest = latest_tag(run.checkpoint_dir)
    if latest is None:
        return "No checkpoint was written yet: start the run again"
    return f"The last complete checkpoint is {run.checkpoint_dir / latest}: continue with --resume"


def finish_wandb(run: Run) -> None:
    """DeepSpeed's W&B monitor opens the run and never closes it: close it here, or the offline
    file can end before the logged records reach it (wandb writes from a service process)."""
    if run.ds_config.get("wandb", {}).get("enabled"):
        import wandb
        if wandb.run is not None:
            wandb.finish()
