"""FreiHAND fixture in its exact released layout -> shards; joints, units, projection, masks,
splits, resume after kill -9, bad input."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from dataprep.cli import cli
from shards import iter_samples, read_manifest
from tests.hand_fixtures import draw_disk, find_dot, hand21_mm, project
from tests.dataprep.skips import read_skips

N_TRAIN, N_EVAL = 3, 2
# The fixture's camera in the crops' pixel-corner convention; the release's K (OpenCV convention,
# integer = pixel centre) has the principal point half a pixel lower.
K = np.array([[480.0, 0, 112.25], [0, 480.0, 111.75], [0, 0, 1]])
K_RELEASE = K - [[0, 0, 0.5], [0, 0, 0.5], [0, 0, 0]]


def make_freihand(root: Path, n_train=N_TRAIN, n_eval=N_EVAL) -> dict:
    """Write training/{rgb,mask}, evaluation/rgb and the *_K/xyz.json files as released."""
    truth = {}
    for folder, n, versions in (("training", n_train, 4), ("evaluation", n_eval, 1)):
        (root / folder / "rgb").mkdir(parents=True)
        xyz = [hand21_mm((10.0 * a - 10, 40.0 + 5.0 * a, 600.0 + 20 * a), rotate_deg=15 * a) / 1000.0 for a in range(n)]
        (root / f"{folder}_xyz.json").write_text(json.dumps([x.tolist() for x in xyz]))
        (root / f"{folder}_K.json").write_text(json.dumps([K_RELEASE.tolist()] * n))
        (root / f"{folder}_scale.json").write_text(json.dumps([0.025] * n))
        if folder == "training":
            (root / folder / "mask").mkdir()
        for a in range(n):
            uv = project(xyz[a] * 1000, K[0, 0], K[1, 1], K[0, 2], K[1, 2])
            if folder == "training":
                m = np.zeros((224, 224, 3), np.uint8)
                lo, hi = uv.min(0).astype(int), uv.max(0).astype(int)
                m[lo[1]:hi[1], lo[0]:hi[0]] = 255      # hand box = foreground
                Image.fromarray(m).save(root / folder / "mask" / f"{a:08d}.jpg", quality=90)
            for version in range(versions):
                img = np.full((224, 224, 3), 40 + 50 * version, np.uint8)
                draw_disk(img, uv[0], (255, 0, 255), 5.0)    # wrist
                draw_disk(img, uv[8], (0, 255, 0), 5.0)      # index tip
                Image.fromarray(img).save(root / folder / "rgb" / f"{version * n + a:08d}.jpg", quality=98, subsampling=0)
        truth[folder] = np.array(xyz)
    return truth


def test_freihand_conversion(tmp_path):
    src, out = tmp_path / "FreiHAND_pub_v2", tmp_path / "shards"
    truth = make_freihand(src)
    res = CliRunner().invoke(cli, ["freihand", str(src), str(out), "--crop-size", "128", "--shard-count", "5"])
    assert res.exit_code == 0, res.output
    train = list(iter_samples(out / "train"))
    test = list(iter_samples(out / "test"))
    assert len(train) == 4 * N_TRAIN and len(test) == N_EVAL
    assert read_manifest(out / "train")["num_shards"] == 3            # 12 samples, 5 per shard
    assert {s.meta["split"] for s in train} == {"train"} and {s.meta["split"] for s in test} == {"test"}
    assert sorted(s.meta["version"] for s in train) == sorted(["gs", "hom", "sample", "auto"] * N_TRAIN)
    for s in train + test:
        anno = s.meta["annotation_id"]
        xyz = truth["training" if s.meta["split"] == "train" else "evaluation"][anno]
        np.testing.assert_allclose(s.joints3d_mm, xyz * 1000, atol=1e-3)   # metres -> mm, order kept
        fx, fy, cx, cy = s.intrinsics
        np.testing.assert_allclose(project(s.joints3d_mm, fx, fy, cx, cy), s.joints2d_px, atol=1e-3)
        assert s.image.shape == (128, 128, 3) and s.visible.all()
        # the release's K is in pixel-centre coordinates: joints2d is its projection + 0.5, through the crop
        a = np.array(s.meta["crop_affine"])
        uv_release = project(xyz * 1000, K_RELEASE[0, 0], K_RELEASE[1, 1], K_RELEASE[0, 2], K_RELEASE[1, 2])
        np.testing.assert_allclose((uv_release + 0.5) @ a[:, :2].T + a[:, 2], s.joints2d_px, atol=1e-3)
        assert s.meta["principal_point_shift_px"] == 0.5
        # the pixels moved with the joints (a half-pixel error would show)
        np.testing.assert_allclose(find_dot(s.image, (255, 0, 255)), s.joints2d_px[0], atol=0.3)
        np.testing.assert_allclose(find_dot(s.image, (0, 255, 0)), s.joints2d_px[8], atol=0.3)
        assert s.meta["joint_order"] == "hand21" and s.meta["root_kind"] == "wrist"
    for s in train:
        assert s.mask is not None and set(np.unique(s.mask)) <= {0, 255}
        u, v = s.joints2d_px[9].astype(int)      # middle MCP lies inside the hand box
        assert s.mask[v, u] == 255 and s.mask[2, 2] == 0
    assert all(s.mask is None for s in test)   # the evaluation archive's segmaps are absent here
    res = CliRunner().invoke(cli, ["verify", str(out)])
    assert res.exit_code == 0 and "train: OK, 12 samples" in res.output, res.output


def _shard_bytes(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.glob("*.tar")) + sorted(d.glob("*.idx"))}


def test_freihand_resume_after_kill_equals_uninterrupted(tmp_path):
    src = tmp_path / "FreiHAND_pub_v2"
    make_freihand(src, n_train=30, n_eval=1)
    args = ["freihand", str(src), None, "--splits", "train", "--crop-size", "96", "--shard-count", "4"]
    whole = tmp_path / "whole"
    assert CliRunner().invoke(cli, [a if a else str(whole) for a in args]).exit_code == 0

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "dataprep.cli"] + [a if a else str(killed) for a in args]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[2], stderr=subprocess.DEVNULL)
    progress = killed / "train" / "progress.json"
    deadline = time.time() + 120
    while not progress.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "conversion finished before it could be killed"
    assert not (killed / "train" / "manifest.json").exists()
    visible = sorted((killed / "train").glob("*.tar"))
    assert 1 <= len(visible) < 30
    for shard in visible:   # every shard under a final name is complete and indexed
        count = int(shard.with_suffix(".idx").read_text().split()[1])
        assert count == 4 and len(list(iter_samples(shard))) == count

    assert CliRunner().invoke(cli, [a if a else str(killed) for a in args]).exit_code == 0
    assert _shard_bytes(killed / "train") == _shard_bytes(whole / "train")
    assert read_manifest(killed / "train")["samples"] == 120


def test_freihand_bad_input(tmp_path):
    src = tmp_path / "FreiHAND_pub_v2"
    make_freihand(src)
    (src / "training" / "rgb" / "00000004.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["freihand", str(src), str(out), "--splits", "train", "--shuffle-seed", "-1"])
    assert res.exit_code != 0
    assert "00000004.jpg" in res.output and "freihand_train_00000004" in res.output
    res = CliRunner().invoke(cli, ["freihand", str(src), str(tmp_path / "out2"), "--splits", "train", "--skip-bad"])
    assert res.exit_code == 0, res.output
    m = read_manifest(tmp_path / "out2" / "train")
    skips = read_skips(tmp_path / "out2" / "train")
    assert m["samples"] == 11 and [s["key"] for s in skips] == ["freihand_train_00000004"]
    assert skips[0]["file"].endswith("00000004.jpg")

    xyz = json.loads((src / "training_xyz.json").read_text())
    xyz[1][3][2] = float("nan")
    (src / "training_xyz.json").write_text(json.dumps(xyz))
    res = CliRunner().invoke(cli, ["freihand", str(src), str(tmp_path / "out3"), "--splits", "train"])
    assert res.exit_code != 0 and "NaN" in res.output and "training_xyz.json" in res.output
    (src / "training_K.json").write_text(json.dumps([[[1, 0], [0, 1]]] * N_TRAIN))
    res = CliRunner().invoke(cli, ["freihand", str(src), str(tmp_path / "out4"), "--splits", "train"])
    assert res.exit_code != 0 and "training_K.json" in res.output and "shape" in res.output
