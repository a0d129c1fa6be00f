"""Every stage writes TensorBoard event files next to the CSV monitor (scalars through DeepSpeed's
monitor, figures through torch's SummaryWriter), and with --wandb an offline W&B run: real tiny
pretrain and finetune runs, their event files read back with tensorboard's EventAccumulator."""
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.trainer.tiny_run import SIZE, TINY, source_shards
from trainer.cli import cli


def run_ok(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output[-3000:]
    return result


def events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    log_dir = run_dir / "monitor" / "tensorboard"
    assert log_dir.is_dir() and (run_dir / "monitor" / "csv").is_dir()   # side by side
    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tb")
    source = source_shards(root)
    env_before = {k: os.environ.get(k) for k in ("WANDB_MODE", "WANDB_DIR")}
    run_ok("pretrain", "--source", source, "--no-backgrounds", *TINY, "--decoder-dim", 32, "--decoder-heads", 4,
           "--epochs", 2, "--max-steps", 2, "--log-every", 1, "--figure-every", 1, "--wandb", "--run-dir", root / "pre")
    for k, v in env_before.items():   # add_monitors set them for this process: leave the next run clean
        os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    run_ok("finetune", "--source", source, "--target", source, "--init", root / "pre", *TINY, "--depth-bins", 4,
           "--head-channels", 8, "--epochs", 2, "--warmup-epochs", 0, "--max-steps", 2, "--log-every", 1, "--figure-every", 2, "--run-dir", root / "ft")
    return root / "pre", root / "ft"


def test_pretrain_scalars_and_reconstructions(runs):
    pre, _ = runs
    acc = events(pre)
    scalars = acc.Tags()["scalars"]
    for tag in ("loss", "lr", "schedule_lr", "steps_per_s", "samples_per_s", "target_share"):
        assert f"Train/Samples/{tag}" in scalars, (tag, scalars)
    loss = acc.Scalars("Train/Samples/loss")
    assert len(loss) == 2 and all(np.isfinite(e.value) and e.value > 0 for e in loss)
    # the same numbers as metrics.jsonl, at the samples seen (x-axis: samples seen)
    import json
    logged = [json.loads(x) for x in (pre / "metrics.jsonl").read_text().splitlines()]
    logged = [m for m in logged if "loss" in m]
    assert [round(e.value, 5) for e in loss] == [round(m["loss"], 5) for m in logged]
    steps = [e.step for e in loss]
    assert steps == sorted(steps) and steps[0] > 0
    images = acc.Images("Figures/reconstruction")
    assert [e.step for e in images] == steps   # a figure at each of the 2 steps
    from PIL import Image
    import io
    figure = Image.open(io.BytesIO(images[-1].encoded_image_string))
    assert figure.size == Image.open(pre / "figures" / "reconstruction_step00000002.png").size


def test_finetune_ar_loss_and_pose_and_attention_images(runs):
    _, ft = runs
    acc = events(ft)
    scalars = acc.Tags()["scalars"]
    for tag in ("loss", "pose_loss", "ar_loss", "schedule_lr", "samples_per_s"):
        assert f"Train/Samples/{tag}" in scalars, (tag, scalars)
    ar = acc.Scalars("Train/Samples/ar_loss")
    assert ar[0].value == 0.0 and ar[1].value > 0   # E starts as A, then moves
    assert set(acc.Tags()["images"]) == {"Figures/pose", "Figures/attention"}


def test_wandb_is_off_by_default_and_offline_when_asked(runs):
    pre, ft = runs
    assert not (ft / "wandb").exists()
    offline = list((pre / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, list((pre / "wandb").iterdir()) if (pre / "wandb").exists() else "no wandb dir"
    data = list(offline[0].glob("*.wandb"))
    assert data and data[0].stat().st_size > 0
    # the offline file holds the logged scalars and the figure (records are protobuf; names readable)
    raw = data[0].read_bytes()
    assert b"Train/Samples/loss" in raw and b"Figures/reconstruction" in raw
