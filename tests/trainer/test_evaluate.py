"""`trainer evaluate` end to end on tiny shards: a real fine-tuning checkpoint (one step of
`trainer.finetune` on a tiny ViT), the DALI eval loader, one and two ranks, oracle heatmaps with
known errors, and the shards it must refuse."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from shards.reader import iter_samples
from shards.schema import encode_sample
from shards.writer import ShardWriter
from tests.shards.synthetic import hand_sample, write_shards
from trainer import engine
from trainer import evaluate as ev
from trainer.cli import cli
from trainer.finetune import finetune
from trainer.heatmaps import render_heatmaps
from trainer.reconstruct import camera_to_voxels

REPO = Path(__file__).resolve().parents[2]
NUM_SAMPLES = 10
MIRRORED = {0, 3, 6, 9}          # samples flagged as mirrored left hands


def stb_like_samples():
    samples = []
    for i in range(NUM_SAMPLES):
        s = hand_sample(f"h{i:03d}", i, 64)
        s.meta.update(dataset="stb", split="test", mirrored=i in MIRRORED)
        samples.append(s)
    return samples


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Hand shards (3 files) and a fine-tuning run: tiny ViT, 64 px input, 16 depth bins, 1 step."""
    root = tmp_path_factory.mktemp("evaluate")
    shards = write_shards(root / "stb_test", stb_like_samples(), per_shard=4)
    settings = engine.TrainSettings(run_dir=root / "ft", ds_config=engine.DS_CONFIG_DIR / "cpu_finetune.json",
                                    epochs=1, warmup_epochs=0, figure_every=0)
    finetune(shards, None, settings=settings, init="none", model="tiny", input_size=64, depth_bins=16,
             source_only=True)
    results = ev.evaluate([root / "ft"], [shards], names=["Ours"], protocols=("hand", "hand3d"), batch_size=4)
    return root, shards, results


def models(doc: dict) -> list[dict]:
    """The evaluations of checkpoints (not of the constant baseline) in a results document."""
    return [e for e in doc["evaluations"] if e["checkpoint"] is not None]


def oracle(spec, depth_shift_bins=0.0):
    """model_outputs replacement: Gaussians rendered at each sample's ground-truth voxels (every
    joint but the root moved `depth_shift_bins` deeper) and uniform attention."""
    volume = spec.volume()
    grid = spec.input_size // spec.encoder["patch_size"]

    def outputs(model, batch):
        vox = camera_to_voxels(batch["joints3d_mm"].numpy(), batch["intrinsics"].numpy(),
                               batch["crop_to_input"].numpy(), volume, root=0)
        vox[:, 1:, 2] += depth_shift_bins
        shape = (spec.depth_bins, volume.heatmap_size, volume.heatmap_size)
        heatmaps = render_heatmaps(torch.from_numpy(vox), shape)
        return heatmaps, torch.full((len(vox), grid * grid), 1.0 / grid ** 2)
    return outputs


def test_results_of_a_finetuned_checkpoint(setup):
    root, shards, results = setup
    stored = list(iter_samples(shards))
    keys = [s.key for s in stored]
    assert [e["protocol"]["name"] for e in models(results)] == ["hand", "hand3d"]
    hand = models(results)[0]
    assert hand["method"] == "Ours" and hand["dataset"] == "stb" and hand["split"] == "test"
    assert hand["per_sample"]["keys"] == keys and hand["metrics"]["num_samples"] == NUM_SAMPLES
    assert hand["checkpoint"].endswith("checkpoints/step00000001") and hand["checkpoint_step"] == 1

    # per-sample file: ground truth back in the original camera frame (mirrored samples: X negated),
    # and the headline numbers are exactly the metrics of the stored predictions
    pred = np.load(root / "ft" / hand["predictions"])
    assert pred["keys"].tolist() == keys
    gt = np.stack([s.joints3d_mm for s in stored]).astype(np.float64)
    flip = np.array([i in MIRRORED for i in range(NUM_SAMPLES)])
    gt[flip, :, 0] *= -1
    np.testing.assert_allclose(pred["joints3d_gt_mm"], gt, atol=1e-4)
    np.testing.assert_array_equal(pred["mirrored"], flip)
    wrist_aligned = (pred["joints3d_pred_mm"] - pred["joints3d_pred_mm"][:, :1]) - (gt - gt[:, :1])
    epe = np.linalg.norm(wrist_aligned, axis=-1).mean(axis=1)
    np.testing.assert_allclose(pred["hand__epe"], epe, rtol=1e-9)
    np.testing.assert_allclose(hand["per_sample"]["epe"], epe, rtol=1e-9)
    assert hand["metrics"]["epe"] == pytest.approx(epe.mean(), rel=1e-9)
    # the root is placed at its ground-truth depth; the model's root depth is not estimated
    np.testing.assert_allclose(pred["root_depth_mm"], gt[:, 0, 2], atol=1e-4)
    assert pred["attention_last_block"].shape == (NUM_SAMPLES, 16)
    total = pred["attention_last_block"].sum(1)          # softmax row without the class token's own entry
    assert (total > 0).all() and (total < 1).all()

    table = (root / "ft" / "results.md").read_text()
    ours = f"| Ours | {hand['metrics']['epe']:.1f} | {models(results)[1]['metrics']['epe']:.1f} |"
    assert "| Method | STB | STB [hand3d] |" in table and ours in table
    sheet = Image.open(root / "ft" / "sheet_Ours__stb.png")
    assert sheet.size == (4 * 160, 2 * 26 + 8 * (160 + 16))     # 4 best + 4 worst rows of 4 tiles
    assert Image.open(root / "ft" / "pck_hand.png").size == (640, 480)
    assert (root / "ft" / "pck_hand3d.png").is_file()


def test_constant_baseline_row_is_the_mean_source_pose(setup):
    """The fine-tuning run records its source's mean root-relative pose; evaluate scores that
    constant on every shard set, first in the table, with the numbers computed here by hand."""
    root, shards, results = setup
    stored = list(iter_samples(shards))
    gt = np.stack([s.joints3d_mm for s in stored]).astype(np.float64)      # stored frame (mirrored as stored)
    mean = (gt - gt[:, :1]).mean(axis=0)
    recorded = json.loads((root / "ft" / "config.json").read_text())["options"]["mean_pose"]
    assert recorded["samples"] == NUM_SAMPLES and recorded["joint_order"] == "hand21"
    np.testing.assert_allclose(recorded["joints_mm"], mean, atol=1e-3)

    constant = [e for e in results["evaluations"] if e["checkpoint"] is None]
    assert [e["protocol"]["name"] for e in constant] == ["hand", "hand3d"]
    assert results["evaluations"][:2] == constant                             # first rows
    row = constant[0]
    assert row["method"] == ev.CONSTANT_LABEL and row["baseline"] == "constant" and row["dataset"] == "stb"
    # a reflection changes no distance: the wrist-aligned error of the constant in the stored frame
    expected = np.linalg.norm(mean[None] - (gt - gt[:, :1]), axis=-1).mean(axis=1)
    np.testing.assert_allclose(row["per_sample"]["epe"], expected, atol=2e-3)   # the mean is stored to 1 um
    assert row["metrics"]["epe"] == pytest.approx(expected.mean(), abs=2e-3)
    table = (root / "ft" / "results.md").read_text().splitlines()
    rows = [line for line in table if line.startswith("| ") and not line.startswith("| Method")]
    assert rows[0].startswith(f"| {ev.CONSTANT_LABEL} | ") and rows[1].startswith("| Ours | ")


def test_oracle_heatmaps_give_zero_and_known_errors(setup, monkeypatch, tmp_path):
    root, shards, _ = setup
    spec = ev.model_spec(root / "ft")
    assert (spec.joint_order, spec.input_size, spec.depth_bins, spec.depth_range_mm) == ("hand21", 64, 16, 400.0)
    monkeypatch.setattr(ev, "model_outputs", oracle(spec))
    exact = ev.evaluate([root / "ft"], [shards], names=["Oracle"], protocols=("hand", "hand3d"), batch_size=4,
                        out_dir=tmp_path / "oracle", sheet_count=1)
    for e in models(exact):
        assert e["metrics"]["num_samples"] == NUM_SAMPLES
        assert max(e["per_sample"]["epe"]) < 0.01                  # mm
        assert e["metrics"]["auc_20_50"] == 1.0 and e["metrics"]["pck@20"] == 1.0

    # soft-argmax: the expectation over a Gaussian cut off by the volume's faces is pulled inward a little
    soft = models(ev.evaluate([root / "ft"], [shards], names=["Soft"], protocols=("hand",), decode="soft_argmax",
                              batch_size=5, out_dir=tmp_path / "soft", sheet_count=0))[0]
    assert soft["decode"] == "soft_argmax" and 0.01 < soft["metrics"]["epe"] < 0.5

    # every joint but the wrist one depth bin (400/16 = 25 mm) too deep: u, v are unchanged, so the
    # joint slides along its camera ray, error b * |P| / Z; EPE = the mean over all 21 joints
    monkeypatch.setattr(ev, "model_outputs", oracle(spec, depth_shift_bins=1.0))
    shifted = ev.evaluate([root / "ft"], [shards], names=["Deeper"], protocols=("hand",), batch_size=4,
                          out_dir=tmp_path / "shifted", sheet_count=0)
    joints = np.stack([s.joints3d_mm for s in iter_samples(shards)]).astype(np.float64)
    expected = (25.0 * np.linalg.norm(joints[:, 1:], axis=-1) / joints[:, 1:, 2]).sum(1) / 21
    np.testing.assert_allclose(models(shifted)[0]["per_sample"]["epe"], expected, atol=0.01)
    assert 23.0 < expected.mean() < 25.0

    # --compare: one table over both runs' results.json
    out = CliRunner().invoke(cli, ["evaluate", "--compare", str(root / "ft"), str(tmp_path / "shifted")])
    assert out.exit_code == 0, out.output
    rows = {line.split(" | ")[0]: line for line in out.output.splitlines() if line.startswith("| ")}
    ours = [e["metrics"]["epe"] for e in models(json.loads((root / "ft" / "results.json").read_text()))]
    assert ours[0] > expected.mean()                      # a one-step model is worse than the shifted oracle
    assert rows["| Deeper"] == f"| Deeper | **{expected.mean():.1f}** | - |"
    assert rows["| Ours"] == f"| Ours | {ours[0]:.1f} | {ours[1]:.1f} |"


def test_two_ranks_count_every_sample_once(setup, tmp_path):
    """`python -m trainer evaluate` on 2 CPU ranks started as the deepspeed launcher starts them
    (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_* in the environment, --local_rank inserted), batch 3:
    each rank reads 5 samples in 2 batches, one of them padded. Every sample comes back once,
    with the 1-rank predictions."""
    root, shards, one_rank = setup
    procs = []
    for rank in range(2):
        env = dict(os.environ, DS_ACCELERATOR="cpu", POSEMAE_FORCE_CPU="1", RANK=str(rank), LOCAL_RANK=str(rank),
                   WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="29647")
        cmd = [sys.executable, "-m", "trainer", f"--local_rank={rank}", "evaluate", "--ckpt", str(root / "ft"),
               "--shards", str(shards), "--name", "Ours", "--out", str(tmp_path), "--batch-size", "3",
               "--sheet-count", "0"]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (stdout, stderr) in zip(procs, outputs):
        assert p.returncode == 0, stdout[-3000:] + stderr[-3000:]
    two = models(json.loads((tmp_path / "results.json").read_text()))[0]
    one = models(one_rank)[0]
    assert two["world_size"] == 2 and two["metrics"]["num_samples"] == NUM_SAMPLES
    assert two["per_sample"]["keys"] == one["per_sample"]["keys"]       # each once, storage order
    np.testing.assert_allclose(two["per_sample"]["epe"], one["per_sample"]["epe"], atol=1e-3)
    a, b = np.load(root / "ft" / one["predictions"]), np.load(tmp_path / two["predictions"])
    np.testing.assert_allclose(a["uvz_vox"], b["uvz_vox"], atol=1e-4)
    assert f"| Ours | {two['metrics']['epe']:.1f} |" in outputs[0][0]       # rank 0 prints the table
    assert "| Ours |" not in outputs[1][0]                                   # only rank 0 reports


def test_gather_refuses_lost_or_doubled_samples(setup):
    root, shards, _ = setup
    info = ev.scan_shards(shards, "hand21")
    assert info.keys == [f"h{i:03d}" for i in range(NUM_SAMPLES)]          # storage order
    assert info.mirrored.tolist() == [i in MIRRORED for i in range(NUM_SAMPLES)] and info.dataset == "stb"
    n = len(info)
    local = {"keys": list(info.keys), "heatmap_shape": (16, 16, 16), "uvz_vox": np.zeros((n, 21, 3)),
             "attention": np.zeros((n, 16)), **{k: np.zeros((n, 1)) for k in ev._GROUND_TRUTH}}
    dist = engine.Dist(0, 1, 0)
    merged = ev.gather_predictions(local, info, dist)
    assert merged["keys"] == info.keys
    doubled = dict(local, keys=info.keys[:-1] + info.keys[:1])
    with pytest.raises(ev.EvaluationError, match=r"counted twice \['h"):
        ev.gather_predictions(doubled, info, dist)
    with pytest.raises(ev.EvaluationError, match="missing"):
        ev.gather_predictions(dict(local, keys=info.keys[:-1]), info, dist)


def write_members(out_dir, samples, drop=None):
    """Shards written like write_shards, with member `drop` left out of sample `drop[0]`."""
    with ShardWriter(out_dir, max_count=4, command=["tests"]) as writer:
        for i, s in enumerate(samples):
            members = encode_sample(s)
            if drop and s.key == drop[0]:
                del members[drop[1]]
            writer.write(s.key, members, i + 1)
    return out_dir


def test_bad_shards_stop_with_one_clear_error(setup, tmp_path):
    root, _, _ = setup
    runner = CliRunner()

    def run(shards):
        return runner.invoke(cli, ["evaluate", "--ckpt", str(root / "ft"), "--shards", str(shards),
                                   "--out", str(tmp_path / "out")])

    # a body shard set given to a hand model
    bodies = []
    for s in stb_like_samples()[:3]:
        s.joints3d_mm, s.joints2d_px, s.visible = s.joints3d_mm[:17], s.joints2d_px[:17], s.visible[:17]
        s.meta["joint_order"] = "h36m17"
        bodies.append(s)
    out = run(write_shards(tmp_path / "bodies", bodies))
    assert out.exit_code == 1
    assert out.output.strip().splitlines() == [
        f"Error: joint order 'h36m17' does not match the model's 'hand21' (file {tmp_path / 'bodies' / 'shard-000000.tar'}, "
        "sample h000)"]

    # a sample without its crop intrinsics
    out = run(write_members(tmp_path / "no_k", stb_like_samples(), drop=("h005", "intrinsics.f32")))
    assert out.exit_code == 1
    assert "no intrinsics.f32 (crop intrinsics)" in out.output
    assert f"file {tmp_path / 'no_k' / 'shard-000001.tar'}, sample h005" in out.output

    # a shard changed after conversion
    corrupt = write_shards(tmp_path / "corrupt", stb_like_samples())
    tar = corrupt / "shard-000002.tar"
    data = bytearray(tar.read_bytes())
    data[2000] ^= 0xFF
    tar.write_bytes(bytes(data))
    out = run(corrupt)
    assert out.exit_code == 1 and "sha256 differs" in out.output and "shard-000002.tar" in out.output
    assert not (tmp_path / "out" / "results.json").exists()

    # protocols must fit the skeleton
    out = runner.invoke(cli, ["evaluate", "--ckpt", str(root / "ft"), "--shards", str(root / "stb_test"),
                              "--out", str(tmp_path / "out"), "--protocol", "h36m17"])
    assert out.exit_code == 1 and "protocol 'h36m17' is for h36m17 skeletons" in out.output


def test_one_constant_row_per_distinct_mean_pose():
    """Runs that name one source two ways share a row; another source gets its own, labelled."""
    def spec(source, offset=0.0):
        mean = {"joints_mm": (np.arange(63).reshape(21, 3) + offset).tolist(), "joint_order": "hand21",
                "samples": 10, "source": source}
        return ev.ModelSpec(checkpoint="c", run_dir=None, step=1, joint_order="hand21", encoder={}, num_joints=21,
                            depth_bins=16, head_channels=64, depth_range_mm=400.0, mean_pose=mean)
    same = ev.constant_baselines([spec("shards/a/train"), spec("/abs/shards/a/train"), ev.ModelSpec(
        checkpoint="c", run_dir=None, step=1, joint_order="hand21", encoder={}, num_joints=21, depth_bins=16,
        head_channels=64, depth_range_mm=400.0)])
    assert list(same) == [ev.CONSTANT_LABEL]
    two = ev.constant_baselines([spec("shards/a/train"), spec("shards/b/train", offset=5.0)])
    assert sorted(two) == ["Mean pose of shards/a/train (constant)", "Mean pose of shards/b/train (constant)"]
