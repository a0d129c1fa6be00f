"""`fit`: the training loop every stage shares."""
from __future__ import annotations

import json
import sys
import time
from typing import Callable

import torch

from shards.device import cuda_available
from shards.files import atomic_write_json
from shards.progress import progress
from trainer.errors import RankLostError

from .distributed import any_rank, mean_over_ranks, sum_over_ranks
from .faults import LOST_PEER_MESSAGES, lost_ranks, record_process, stop_cleanly_on_sigterm, stop_on_nonfinite
from .run import Run, StepOutput, finish_wandb, log_images, peak_rss_mib, resume_hint
from .saving import load_checkpoint, save_checkpoint
from .schedule import Schedule, schedule_for, seed_micro_step, set_lr


def fit(run: Run, model: torch.nn.Module, loaders: dict, step_fn: Callable, groups: list[dict],
        figure_fn: Callable | None = None) -> dict:
    """Train `model` for the run's schedule. The first loader sets the epoch (its len() is
    micro-batches per epoch per rank); the others are cycled alongside it. Returns a summary
    (steps, steps per second, peak RSS) that is also the last line of metrics.jsonl."""
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    if not cuda_available():
        torch.use_deterministic_algorithms(True)  # bit-identical resume on CPU
    record_process(run)
    restore_sigterm = stop_cleanly_on_sigterm(run)
    try:
        return _fit(run, model, loaders, step_fn, groups, figure_fn)
    except RuntimeError as e:
        # gloo/NCCL report a dead peer from inside whichever collective was waiting on it, or
        # time out (--dist-timeout) on one that hangs
        if run.dist.world_size > 1 and any(s in str(e) for s in LOST_PEER_MESSAGES):
            raise RankLostError(f"rank {run.dist.rank} lost contact with {lost_ranks(run, wait_s=2.0)} of "
                                f"{run.run_dir} ({e}). {resume_hint(run)}") from None
        raise
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
        finish_wandb(run)
        restore_sigterm()


def _fit(run: Run, model: torch.nn.Module, loaders: dict, step_fn: Callable, groups: list[dict],
         figure_fn: Callable | None) -> dict:
    import deepspeed
    settings = run.settings
    engine, optimizer, _, _ = deepspeed.initialize(model=model, model_parameters=groups, config=run.ds_config)
    schedule = schedule_for(settings, run.ds_config, loaders)
    if run.resume_tag is not None:
        step = load_checkpoint(run, engine, loaders)
    else:
        step = 0
        run.log({"event": "start", "total_steps": schedule.total_steps, "steps_per_epoch": schedule.steps_per_epoch,
                 "world_size": run.dist.world_size, "global_batch": run.ds_config["train_batch_size"]})
    if step >= schedule.stop_step:  # resumed a finished run: nothing to do
        return {"event": "end", "steps": step, "total_steps": schedule.total_steps, "steps_this_session": 0,
                "seconds": 0.0, "steps_per_s": 0.0, "peak_rss_mib": round(peak_rss_mib(), 1)}

    (run.run_dir / "ranks").mkdir(parents=True, exist_ok=True)
    batches = Batches(run, loaders)
    log = TrainingLog(run, engine, schedule, first_step=step)
    last = {}
    while step < schedule.stop_step:
        set_lr(optimizer, schedule.lr(step))
        for micro in range(run.accumulation):
            last = batches.next(step)
            # the micro-batch's first position in the global order: the same micro-batch draws the
            # same masks and drop path on any world size
            first = step * run.global_batch + run.dist.rank * (run.global_batch // run.dist.world_size)
            seed_micro_step(settings.seed, first + micro * run.micro_batch)
            out = step_fn(engine, last)
            log.keys(step, micro, out)
            if any_rank(not bool(torch.isfinite(out.loss.detach()).all()), engine.device, run.dist.world_size):
                stop_on_nonfinite(run, step, out, engine)
            engine.backward(out.loss)
            engine.step()
            log.add(out)
        step += 1
        log.step_done(step, optimizer, batches.bad_samples)
        if step % settings.checkpoint_every == 0 or step == schedule.stop_step:
            save_checkpoint(run, engine, loaders, step, schedule.steps_per_epoch)
        if settings.figure_every and (step % settings.figure_every == 0 or step == schedule.stop_step):
            save_figures(run, engine, figure_fn, last, step)
    return log.close(step, batches.bad_samples)


class Batches:
    """The next micro-batch of every loader, each cycled through its epochs. Samples a loader left
    out (--skip-bad-samples) are counted, and logged to stderr and ranks/rank<r>-bad-samples.jsonl."""

    def __init__(self, run: Run, loaders: dict):
        self.run, self.loaders = run, loaders
        for loader in loaders.values():
            if hasattr(loader, "skip_bad_samples"):
                loader.skip_bad_samples = run.settings.skip_bad_samples
        self.iterators = {name: iter(loader) for name, loader in loaders.items()}
        self.bad_samples = 0                 # left out by this rank, this session
        self.bad_samples_log = run.run_dir / "ranks" / f"rank{run.dist.rank:05d}-bad-samples.jsonl"

    def next(self, step: int) -> dict:
        return {name: self._next(name, step) for name in self.loaders}

    def _next(self, name: str, step: int):
        try:
            batch = next(self.iterators[name])
        except StopIteration:  # end of this loader's epoch: the next iter() starts the next one
            self.iterators[name] = iter(self.loaders[name])
            batch = next(self.iterators[name])
        loader = self.loaders[name]
        skipped = loader.drain_skipped() if hasattr(loader, "drain_skipped") else []
        if skipped:
            self.bad_samples += len(skipped)
            with open(self.bad_samples_log, "a") as f:
                for record in skipped:
                    f.write(json.dumps({"step": step + 1, "loader": name, **record}) + "\n")
                    print(f"rank {self.run.dist.rank}: left out bad sample {record['sample']} of {record['file']} "
                          f"at step {step + 1}: {record['error']} (--skip-bad-samples; {self.bad_samples} so far)",
                          file=sys.stderr)
        return batch


class TrainingLog:
    """What the loop reports: metric means every --log-every steps (metrics.jsonl, DeepSpeed's
    monitors, the progress bar on rank 0), every micro-batch's sample keys with --log-keys, and
    at the end the summary and this rank's ranks/rank<r>.json."""

    def __init__(self, run: Run, engine, schedule: Schedule, first_step: int):
        self.run, self.engine, self.schedule = run, engine, schedule
        ranks_dir = run.run_dir / "ranks"
        self.keys_log = open(ranks_dir / f"rank{run.dist.rank:05d}-keys.jsonl", "a") if run.settings.log_keys else None
        self.bar = progress(total=schedule.stop_step, initial=first_step, unit="step", desc=run.stage,
                            disable=not run.dist.is_main, dynamic_ncols=True, mininterval=1.0)
        self.sums: dict[str, float] = {}
        self.count = 0
        self.began, self.first_step, self.samples = time.perf_counter(), first_step, 0

    def keys(self, step: int, micro: int, out: StepOutput) -> None:
        if self.keys_log is not None:
            self.keys_log.write(json.dumps({"step": step + 1, "micro": micro, "keys": list(out.keys)}) + "\n")

    def add(self, out: StepOutput) -> None:
        for name, value in {"loss": out.loss, **out.metrics}.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value.detach() if torch.is_tensor(value) else value)
        self.count += 1

    def step_done(self, step: int, optimizer, bad_samples: int) -> None:
        run, engine = self.run, self.engine
        self.samples += run.ds_config["train_batch_size"]
        lr = optimizer.param_groups[0]["lr"] / optimizer.param_groups[0].get("lr_scale", 1.0)
        if step % run.settings.log_every == 0 or step == self.schedule.stop_step:
            means = mean_over_ranks({k: v / self.count for k, v in self.sums.items()}, engine.device,
                                    run.dist.world_size)
            elapsed = time.perf_counter() - self.began
            record = {"step": step, "epoch": round(step / self.schedule.steps_per_epoch, 4), "lr": lr, **means,
                      "steps_per_s": (step - self.first_step) / elapsed, "samples_per_s": self.samples / elapsed}
            if run.settings.skip_bad_samples:   # all ranks, this session
                record["bad_samples"] = sum_over_ranks(bad_samples, engine.device, run.dist.world_size)
            run.log(record)
            if run.dist.is_main:
                # DeepSpeed logs its own Train/Samples/lr (group 0's, layer-decay scaled): add the schedule's
                scalars = {**means, "schedule_lr": lr, "steps_per_s": record["steps_per_s"],
                           "samples_per_s": record["samples_per_s"]}
                engine.monitor.write_events([(f"Train/Samples/{k}", v, engine.global_samples)
                                             for k, v in scalars.items()])
                self.bar.set_postfix(loss=f"{means['loss']:.4g}", lr=f"{lr:.3g}")
            self.sums, self.count = {}, 0
        self.bar.update(1)

    def close(self, step: int, bad_samples: int) -> dict:
        run, engine = self.run, self.engine
        self.bar.close()
        if self.keys_log is not None:
            self.keys_log.close()
        elapsed = time.perf_counter() - self.began
        summary = {"event": "end", "steps": step, "total_steps": self.schedule.total_steps,
                   "steps_this_session": step - self.first_step, "seconds": round(elapsed, 3),
                   "steps_per_s": (step - self.first_step) / elapsed, "peak_rss_mib": round(peak_rss_mib(), 1)}
        if run.settings.skip_bad_samples:
            summary["bad_samples"] = sum_over_ranks(bad_samples, engine.device, run.dist.world_size)
        run.log(summary)
        # Every rank's own account: its memory, and a digest of its parameters (data-parallel ranks
        # must end identical; BatchNorm running statistics are per rank, rank 0's are checkpointed).
        atomic_write_json(run.run_dir / "ranks" / f"rank{run.dist.rank:05d}.json",
                          {**summary, "rank": run.dist.rank, "parameters_sha256": weights_digest(engine.module)},
                          default=str)
        return summary


def save_figures(run: Run, engine, figure_fn: Callable | None, batches: dict, step: int) -> None:
    """The stage's figures of the last batches (rank 0): PNGs in figures/, and TensorBoard/W&B."""
    if figure_fn is None or not run.dist.is_main:
        return
    was_training = engine.module.training
    engine.module.eval()
    try:
        with torch.no_grad():
            images = figure_fn(engine.module, batches, step)
    finally:
        engine.module.train(was_training)
    (run.run_dir / "figures").mkdir(exist_ok=True)
    for name, image in images.items():
        image.save(run.run_dir / "figures" / f"{name}_step{step:08d}.png")
    log_images(run, images, engine.global_samples)


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 over the parameters' names and bytes (buffers left out)."""
    import hashlib
    h = hashlib.sha256()
    for name, tensor in module.named_parameters():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
