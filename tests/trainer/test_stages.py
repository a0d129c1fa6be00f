"""The stages end to end on tiny synthetic shards, on the CPU, through their click commands and
the real DALI pipelines and DeepSpeed engines: segnet -> masks, pretrain (killed with SIGKILL and
resumed; two ranks through the deepspeed launcher), finetune, and the one-line errors."""
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from shards.reader import iter_samples, read_manifest
from tests.shards.synthetic import background_sample, blob_mask, hand_sample, smooth_image, write_shards
from trainer.cli import cli
from trainer.engine import checkpoint_tag_dir
from trainer.pose import read_module_state_dict

REPO = Path(__file__).resolve().parents[2]
STORED = 48        # stored crop side
SIZE = 32          # network input side
TINY = ["--model", "tiny", "--input-size", str(SIZE)]
PRETRAIN_STEPS = 8  # 2 epochs of 4 steps: 24 source samples, 5 source + 3 target per batch


def hand_with_mask(key, i, rng, with_mask, tint):
    """A flat-coloured hand-shaped blob over a darkened smooth background."""
    mask = blob_mask(STORED, rng)
    background = (smooth_image(STORED, 100 + i) * 0.5).astype(np.uint8)
    image = np.where(mask[..., None] > 0, np.asarray(tint, np.uint8), background).astype(np.uint8)
    return hand_sample(key, i, STORED, image=image, mask=mask if with_mask else None)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread here and in the subprocesses (OMP_NUM_THREADS in clean_env): the same
    arithmetic in both, so their weights compare bit for bit, and no OpenMP oversubscription
    when other processes share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage_data")
    rng = np.random.default_rng(0)
    write_shards(root / "source", [hand_with_mask(f"src{i:04d}", i, rng, True, (230, 180, 150)) for i in range(24)],
                 per_shard=16)   # 16 to train on, 8 held out by segnet
    write_shards(root / "target", [hand_with_mask(f"tgt{i:04d}", i, rng, False, (200, 150, 120)) for i in range(12)],
                 per_shard=6)
    write_shards(root / "backgrounds", [background_sample(f"bg{i:04d}", smooth_image(STORED, 500 + i))
                                        for i in range(8)], per_shard=8)
    return root


def invoke(*args):
    """Run `trainer ...` in this process; failures show the command's output."""
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result


def run_ok(*args):
    result = invoke(*args)
    assert result.exit_code == 0, result.output[-3000:]
    return result


def metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def weights(run_dir) -> dict:
    return read_module_state_dict(checkpoint_tag_dir(run_dir))


def clean_env():
    """Subprocesses start their own process group: drop the one this pytest process joined."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    return dict(env, DS_ACCELERATOR="cpu", POSEMAE_FORCE_CPU="1", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pretrain_args(data, run_dir):
    return ["pretrain", "--source", data / "source", "--target", data / "target", "--backgrounds",
            data / "backgrounds", *TINY, "--epochs", 2, "--warmup-epochs", 0.5, "--checkpoint-every", 2,
            "--log-every", 1, "--figure-every", 3, "--run-dir", run_dir]


@pytest.fixture(scope="module")
def segnet_run(data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "seg"
    out = run_ok("segnet", "--source", data / "source", "--run-dir", run_dir, "--input-size", SIZE, "--base", 4,
                 "--epochs", 2, "--warmup-epochs", 0.5, "--log-every", 1, "--figure-every", 2)
    assert "held-out mask IoU" in out.output
    return run_dir


@pytest.fixture(scope="module")
def pretrain_run(data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "pre"
    run_ok(*pretrain_args(data, run_dir))
    return run_dir


# -- segnet and masks -----------------------------------------------------------------------
def test_segnet_reports_the_holdout_iou_of_its_checkpoint(segnet_run, data):
    from trainer.masks import load_segnet
    from trainer.segnet import holdout_iou
    result = json.loads((segnet_run / "results.json").read_text())
    assert result["samples"] == 8 and result["holdout"].endswith("shard-000001.tar")
    # the same number from the saved checkpoint, recomputed here
    model, meta = load_segnet(segnet_run)
    assert meta["step"] == 4 and meta["model"] == {"class": "UNet", "in_ch": 3, "base": 4}
    assert holdout_iou(model, result["holdout"], SIZE) == {"mask_iou": result["mask_iou"], "samples": 8}
    steps = [m for m in metrics(segnet_run) if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2, 3, 4] and all(0 <= m["train_iou"] <= 1 for m in steps)
    assert steps[0]["lr"] == 0.0 and steps[1]["lr"] == pytest.approx(1e-3)   # warm-up: 1 step
    assert Image.open(segnet_run / "figures" / "holdout_masks_step00000004.png").size == (3 * SIZE + 4, 4 * SIZE + 6)


def test_masks_adds_predicted_masks_and_copies_everything_else(segnet_run, data, tmp_path):
    from trainer.masks import load_segnet
    from trainer.segnet import prepare_images
    from trainer.unet import predict_masks
    out = tmp_path / "target_masked"
    result = run_ok("masks", "--model", segnet_run, "--in", data / "target", "--out", out, "--batch-size", 5)
    assert "12 samples" in result.output and "12 masks predicted" in result.output
    manifest = read_manifest(out)
    assert manifest["samples"] == 12 and manifest["num_shards"] == 2     # 6 per shard, as the input
    assert manifest["masks"]["predicted"] == 12 and manifest["masks"]["kept"] == 0
    assert manifest["masks"]["checkpoint"].endswith("step00000004") and manifest["masks"]["threshold"] == 0.5
    assert manifest["source_manifest_command"] == ["tests"]   # what made the input
    originals = list(iter_samples(data / "target", decode=False))
    written = list(iter_samples(out, decode=False))
    assert [r["__key__"] for r in written] == [r["__key__"] for r in originals]
    model, _ = load_segnet(segnet_run)
    for before, after in zip(originals, written):
        for ext in ("jpg", "joints3d.f32", "joints2d.f32", "visible.u8", "intrinsics.f32", "json"):
            assert after[ext] == before[ext], ext   # byte for byte: the JPEG is not re-encoded
        mask = np.asarray(Image.open(io.BytesIO(after["mask.png"])))
        assert mask.shape == (STORED, STORED) and set(np.unique(mask)) <= {0, 255}
    # the first sample's mask, predicted here: input-size probabilities, bilinear to the crop, >= 0.5
    first = np.asarray(Image.open(io.BytesIO(originals[0]["jpg"])).convert("RGB"))
    p = predict_masks(model, prepare_images([first], SIZE))
    full = torch.nn.functional.interpolate(p, size=(STORED, STORED), mode="bilinear", align_corners=False)[0, 0]
    expected = np.where(full.numpy() >= 0.5, 255, 0)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(written[0]["mask.png"]))), expected)
    # a rerun finds every shard complete and rewrites nothing
    stamp = (out / "shard-000000.tar").stat().st_mtime_ns
    run_ok("masks", "--model", segnet_run, "--in", data / "target", "--out", out)
    assert (out / "shard-000000.tar").stat().st_mtime_ns == stamp


# -- pretrain --------------------------------------------------------------------------------
def test_pretrain_run_directory(pretrain_run):
    config = json.loads((pretrain_run / "config.json").read_text())
    assert config["stage"] == "pretrain" and config["options"]["tau"] == 4.0 and config["options"]["use_fcr"]
    assert config["model"]["embed_dim"] == 192 and config["model"]["decoder_depth"] == 1
    assert config["ds_config"]["train_batch_size"] == 8 and config["code_version"]
    steps = [m for m in metrics(pretrain_run) if "loss" in m]
    assert [m["step"] for m in steps] == list(range(1, PRETRAIN_STEPS + 1))
    assert all(m["target_share"] == 3 / 8 for m in steps)   # 3 of every 8 are target (12 of 36 samples)
    assert sorted(p.name for p in (pretrain_run / "checkpoints").iterdir()) == \
        ["latest", "step00000004", "step00000006", "step00000008"]
    figure = Image.open(pretrain_run / "figures" / "reconstruction_step00000008.png")
    assert figure.size == (5 * SIZE + 8, 4 * SIZE + 6)
    assert (pretrain_run / "monitor" / "csv" / "Train_Samples_loss.csv").is_file()


def test_pretrain_killed_and_resumed_gives_the_same_weights(pretrain_run, data, tmp_path):
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "trainer", *map(str, pretrain_args(data, run_dir))]
    proc = subprocess.Popen(cmd, cwd=REPO, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = run_dir / "checkpoints" / "latest"
    deadline = time.time() + 240
    while not (latest.exists() and latest.read_text() >= "step00000002") and time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    killed_at = latest.read_text()
    assert killed_at < "step00000008"

    began = time.perf_counter()
    done = subprocess.run(cmd + ["--resume"], cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = [m for m in metrics(run_dir) if m.get("event") == "resume"][0]
    assert resumed["checkpoint"] == killed_at
    print(f"resume: {time.perf_counter() - began:.1f} s for the whole resumed process, "
          f"{resumed['load_seconds']} s to load the checkpoint")
    a, b = weights(pretrain_run), weights(run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # and every logged loss after the resume point is the uninterrupted run's
    ref = {m["step"]: m["loss"] for m in metrics(pretrain_run) if "loss" in m}
    again = {m["step"]: m["loss"] for m in metrics(run_dir) if "loss" in m}
    assert again == ref


def test_two_rank_pretrain_through_the_deepspeed_launcher(data, tmp_path):
    run_dir = tmp_path / "two"
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
           "--module", "trainer", *map(str, pretrain_args(data, run_dir)), "--log-keys", "--epochs", "1"]
    done = subprocess.run(cmd, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["world_size"] == 2 and config["ds_config"]["train_batch_size"] == 16
    ranks = [json.loads((run_dir / "ranks" / f"rank{r:05d}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["steps"] == ranks[1]["steps"] == 2          # 12 source samples per rank / 5 per batch
    assert ranks[0]["parameters_sha256"] == ranks[1]["parameters_sha256"]
    seen = []
    for r in (0, 1):
        lines = [json.loads(x) for x in (run_dir / "ranks" / f"rank{r:05d}-keys.jsonl").read_text().splitlines()]
        seen.append({k for line in lines for k in line["keys"]})
    assert seen[0].isdisjoint(seen[1]) and all(len(s) == 2 * 8 for s in seen)
    # rank 0's weights are those in the checkpoint
    from trainer.engine import weights_digest
    from trainer.mae import MaskedAutoencoder
    model = MaskedAutoencoder(**{k: v for k, v in config["model"].items() if k != "class"})
    model.load_state_dict(weights(run_dir))
    assert weights_digest(model) == ranks[0]["parameters_sha256"]


# -- finetune --------------------------------------------------------------------------------
def test_finetune_from_pretraining_with_the_attention_regulariser(pretrain_run, data, tmp_path):
    from trainer.pose import load_pose_model
    run_dir = tmp_path / "ft"
    run_ok("finetune", "--source", data / "source", "--target", data / "target", "--init", pretrain_run, *TINY,
           "--depth-bins", 8, "--head-channels", 16, "--layer-decay", 0.75, "--epochs", 1, "--warmup-epochs", 0,
           "--max-steps", 2,
           "--log-every", 1, "--figure-every", 2, "--run-dir", run_dir)
    steps = [m for m in metrics(run_dir) if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2]
    # E starts as a copy of A: their attention agrees exactly until the first update
    assert steps[0]["ar_loss"] == 0.0 and steps[1]["ar_loss"] > 0.0
    assert steps[0]["loss"] == pytest.approx(steps[0]["pose_loss"]) and steps[0]["pose_loss"] > 0
    assert steps[1]["loss"] == pytest.approx(steps[1]["pose_loss"] + 100 * steps[1]["ar_loss"], rel=1e-5)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["options"]["lambda_ar"] == 100.0 and config["options"]["depth_range_mm"] == 400.0
    assert config["options"]["joint_order"] == "hand21"
    model, meta = load_pose_model(run_dir)
    assert model(torch.zeros(2, 3, SIZE, SIZE)).shape == (2, 21, 8, SIZE // 4, SIZE // 4)
    assert meta["step"] == 2
    for name in ("attention", "pose"):
        assert (run_dir / "figures" / f"{name}_step00000002.png").is_file()


def test_finetune_from_scratch_source_only(data, tmp_path):
    run_dir = tmp_path / "scratch"
    run_ok("finetune", "--source", data / "source", "--init", "none", "--source-only", *TINY, "--depth-bins", 8,
           "--head-channels", 16, "--max-steps", 1, "--log-every", 1, "--figure-every", 0, "--run-dir", run_dir)
    steps = [m for m in metrics(run_dir) if "loss" in m]
    assert len(steps) == 1 and "ar_loss" not in steps[0] and steps[0]["loss"] == steps[0]["pose_loss"]
    assert json.loads((run_dir / "config.json").read_text())["options"]["epochs"] == 50   # hands



def test_finetune_with_a_frozen_encoder_trains_the_head_alone(pretrain_run, data, tmp_path):
    from trainer.pose import load_pose_model
    from trainer.pose import PoseModel, load_pretrained
    run_dir = tmp_path / "probe"
    run_ok("finetune", "--source", data / "source", "--init", pretrain_run, "--no-ar", "--freeze-encoder", *TINY,
           "--depth-bins", 8, "--head-channels", 16, "--epochs", 1, "--warmup-epochs", 0, "--max-steps", 2,
           "--seed", 3, "--log-every", 1, "--figure-every", 0, "--run-dir", run_dir)
    trained, meta = load_pose_model(run_dir)
    m = meta["model"]
    torch.manual_seed(3)   # finetune seeds torch before it builds the model: the same initial head
    initial = PoseModel(m["encoder"], m["num_joints"], m["depth_bins"], m["head_channels"], m["deconv_layers"])
    load_pretrained(initial, checkpoint_tag_dir(pretrain_run))
    before, after = initial.state_dict(), trained.state_dict()
    encoder = [k for k in before if k.startswith("encoder.")]
    head = [k for k in before if not k.startswith("encoder.") and before[k].is_floating_point()]
    assert encoder and head
    assert all(torch.equal(before[k], after[k]) for k in encoder)
    assert any(not torch.equal(before[k], after[k]) for k in head)
    assert json.loads((run_dir / "config.json").read_text())["options"]["freeze_encoder"] is True
    msg = one_error("finetune", "--source", data / "source", "--target", data / "target", "--init", pretrain_run,
                    "--freeze-encoder", *TINY, "--run-dir", tmp_path / "with_ar")
    assert "--freeze-encoder" in msg and "--no-ar" in msg

# -- bad input: one clear line --------------------------------------------------------------
def one_error(*args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def test_bad_configs_stop_at_start_with_one_clear_error(data, tmp_path, segnet_run, pretrain_run):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train_batch_size": 12, "train_micro_batch_size_per_gpu": 8,
                               "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}}))
    msg = one_error(*pretrain_args(data, tmp_path / "a"), "--ds-config", bad)
    assert "bad.json: train_batch_size 12 is not a multiple of micro-batch 8 x world size 1" in msg

    msg = one_error("pretrain", "--source", tmp_path / "nowhere", "--no-backgrounds", *TINY, "--run-dir", tmp_path / "b")
    assert "nowhere" in msg

    msg = one_error("finetune", "--source", data / "source", "--target", data / "target", "--init", segnet_run,
                    *TINY, "--run-dir", tmp_path / "c")
    assert "is a segnet checkpoint" in msg and "step00000004" in msg

    msg = one_error("finetune", "--source", data / "source", "--target", data / "target", "--init", pretrain_run,
                    "--model", "small", "--input-size", SIZE, "--run-dir", tmp_path / "d")
    assert "does not fit this encoder" in msg and "width 192" in msg

    msg = one_error("masks", "--model", pretrain_run, "--in", data / "target", "--out", tmp_path / "e")
    assert "is a pretrain checkpoint" in msg and "not a segmentation network" in msg

    msg = one_error(*pretrain_args(data, pretrain_run)[:-2], "--run-dir", pretrain_run, "--model", "small", "--resume")
    assert "is a pretrain checkpoint of" in msg and "'embed_dim': 192" in msg and "'embed_dim': 384" in msg

    msg = one_error(*pretrain_args(data, pretrain_run))
    assert "already holds checkpoints" in msg and "--resume" in msg
