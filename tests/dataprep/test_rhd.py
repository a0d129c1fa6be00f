"""`dataprep rhd` on a tiny tree in RHD's released layout (RHD_published_v2/{training,evaluation}/
{color,depth,mask}/%05d.png + anno_*.pickle), with known joints, intrinsics and masks."""
import pickle

import numpy as np
from click.testing import CliRunner
from PIL import Image

from dataprep.cli import cli
from shards import iter_samples, project, read_manifest
from shards.schema import JOINT_ORDERS
from tests.dataprep.skips import read_skips

HAND21 = JOINT_ORDERS["hand21"]
FINGERS = ("thumb", "index", "middle", "ring", "little")
# RHD's own per-hand order, written from its README: wrist, then each finger tip -> MCP.
RHD_NAMES = ["wrist"] + [f"{f}_{p}" for f in FINGERS for p in ("tip", "dip", "pip", "mcp")]
SIZE = 320
DOT = np.array([230, 20, 20])   # drawn at the kept hand's thumb tip


def right_hand_mm() -> np.ndarray:
    """A plausible right hand (hand21, mm, relative to the palm), fingers up, palm to the camera."""
    j = np.zeros((21, 3))
    j[0] = (0, 45, 5)
    j[1:5] = [(22, 28, 0), (36, 14, -6), (46, -2, -10), (53, -16, -13)]
    for f, x in enumerate((20, 2, -16, -32)):
        for s in range(4):
            j[5 + 4 * f + s] = (x * (1 + 0.06 * s), -12 - (24 - 3 * f) * s, -4 * s)
    return j


def to_rhd(h21: np.ndarray) -> np.ndarray:
    return np.stack([h21[HAND21.index(n)] for n in RHD_NAMES])


def disk(shape, u, v, r):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (xx + 0.5 - u) ** 2 + (yy + 0.5 - v) ** 2 <= r * r


# id -> (left hand x offset, right hand x offset, z, left mask radius, right mask radius, f)
FRAMES = {
    "training": {0: (-110, 110, 520, 20, 12, 300.0), 1: (-100, 120, 560, 10, 18, 310.0), 2: (-120, 100, 500, 15, 15, 290.0)},
    "evaluation": {0: (-115, 115, 540, 16, 9, 305.0), 1: (-105, 105, 480, 8, 14, 295.0)},
}


def write_rhd(base, frames=FRAMES, invisible=()):
    """RHD_published_v2 under `base`; returns {folder: {id: (xyz (42,3) m, K)}}."""
    root = base / "RHD_published_v2"
    truth = {}
    for folder, ids in frames.items():
        for sub in ("color", "depth", "mask"):
            (root / folder / sub).mkdir(parents=True)
        anno, truth[folder] = {}, {}
        for i, (xl, xr, z, rl, rr, f) in ids.items():
            k = np.array([[f, 0, 160.0], [0, f, 160.0], [0, 0, 1]])
            hand = right_hand_mm()
            left = hand * [-1, 1, 1] + [xl, 10, z]      # a left hand is a mirrored right hand
            right = hand + [xr, -5, z + 30]
            xyz = np.concatenate([to_rhd(left), to_rhd(right)]) / 1000.0       # metres
            uvw = xyz @ k.T
            vis = np.ones(42)
            for side, raw in invisible:
                if side == (folder, i):
                    vis[raw] = 0
            anno[i] = {"xyz": xyz.astype(np.float32), "uv_vis": np.column_stack([uvw[:, :2] / uvw[:, 2:], vis]).astype(np.float32),
                       "K": k.astype(np.float32)}
            truth[folder][i] = (anno[i]["xyz"].astype(np.float64), anno[i]["K"].astype(np.float64))
            uv = anno[i]["uv_vis"][:, :2]
            mid = RHD_NAMES.index("middle_mcp")
            labels = np.zeros((SIZE, SIZE), np.uint8)
            labels[200:300, 20:300] = 1                                     # the person
            for off, r, (c0, c1) in ((0, rl, (3, 17)), (21, rr, (18, 33))):
                u, v = uv[off + mid]
                d = disk(labels.shape, u, v, r)
                labels[d] = c1
                labels[d & (np.mgrid[:SIZE, :SIZE][0] + 0.5 < v)] = c0    # two classes of the same hand
            Image.fromarray(labels).save(root / folder / "mask" / f"{i:05d}.png")
            color = np.full((SIZE, SIZE, 3), 120, np.uint8)
            kept = 0 if rl > rr else 21
            color[disk(labels.shape, *uv[kept + RHD_NAMES.index("thumb_tip")], 3.5)] = DOT
            Image.fromarray(color).save(root / folder / "color" / f"{i:05d}.png")
            depth = np.zeros((SIZE, SIZE, 3), np.uint8)
            depth[..., 0] = 7                                                 # (R*256 + G)/65535*5 m
            Image.fromarray(depth).save(root / folder / "depth" / f"{i:05d}.png")
        # Python 2 era pickles name numpy.core.multiarray and have no bytes opcode: protocol 2.
        blob = pickle.dumps(anno, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        (root / folder / f"anno_{folder}.pickle").write_bytes(blob)
    return truth


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def dot_centroid(image):
    hit = (image[..., 0] > 170) & (image[..., 1] < 90) & (image[..., 2] < 90)
    yy, xx = np.nonzero(hit)
    return np.array([xx.mean() + 0.5, yy.mean() + 0.5]), hit.sum()


def test_rhd_converts_the_released_layout(tmp_path):
    truth = write_rhd(tmp_path / "src", invisible=[(("training", 0), RHD_NAMES.index("thumb_tip")),
                                                    (("training", 1), 21 + RHD_NAMES.index("ring_dip"))])
    out = tmp_path / "out"
    res = run("rhd", tmp_path / "src", out, "--crop-size", 128)   # the folder holding RHD_published_v2
    assert res.exit_code == 0, res.output
    samples = {s.key: s for split in ("train", "test") for s in iter_samples(out / split)}
    assert sorted(samples) == ["rhd_test_00000_left", "rhd_test_00001_right", "rhd_train_00000_left",
                               "rhd_train_00001_right", "rhd_train_00002_right"]   # id 2 is a tie: right
    for key, s in samples.items():
        split, sid, side = key.split("_")[1], int(key.split("_")[2]), key.split("_")[3]
        folder = {"train": "training", "test": "evaluation"}[split]
        xyz, k = truth[folder][sid]
        off = 0 if side == "left" else 21
        m = s.meta
        assert (m["split"], m["side"], m["mirrored"], m["root_kind"], m["hand_choice"]) == (split, side, side == "left", "wrist", "mask-pixels")
        assert m["source"] == f"{folder}/color/{sid:05d}.png"
        assert s.image.shape == (128, 128, 3)
        # joint order and units: RHD's thumb MCP (raw 4 of a hand) is hand21 1, its tip (raw 1) is 4
        sign = np.array([-1.0 if side == "left" else 1.0, 1, 1])
        for raw, h21 in ((0, 0), (4, 1), (1, 4), (8, 5), (12, 9), (20, 17), (17, 20)):
            np.testing.assert_allclose(s.joints3d_mm[h21], xyz[off + raw] * 1000 * sign, atol=1e-3)
        assert 100 < np.ptp(s.joints3d_mm, axis=0).max() < 200            # a hand, in mm
        np.testing.assert_allclose(project(s.joints3d_mm.astype(np.float64), s.intrinsics), s.joints2d_px, atol=1e-3)
        scale = 128 / (np.ptp((xyz[off:off + 21] @ k.T)[:, :2] / (xyz[off:off + 21] @ k.T)[:, 2:], axis=0).max() * 1.5)
        np.testing.assert_allclose(s.intrinsics[:2], [k[0, 0] * scale, k[1, 1] * scale], rtol=1e-5)
        # the dot drawn at the kept hand's thumb tip is at joints2d_px[4] in the (mirrored) crop
        c, n = dot_centroid(s.image)
        assert n > 20 and np.abs(c - s.joints2d_px[4]).max() < 0.8, (key, c, s.joints2d_px[4])
        # the mask is the kept hand's disk at its middle MCP, without the person or the other hand
        _, _, _, rl, rr, _ = FRAMES[folder][sid]
        r = (rl if side == "left" else rr) * scale
        yy, xx = np.nonzero(s.mask == 255)
        assert set(np.unique(s.mask)) == {0, 255}
        assert abs(len(xx) / (np.pi * r * r) - 1) < 0.12, (key, len(xx), np.pi * r * r)
        np.testing.assert_allclose([xx.mean() + 0.5, yy.mean() + 0.5], s.joints2d_px[9], atol=0.7)
    assert not samples["rhd_train_00000_left"].visible[4] and samples["rhd_train_00000_left"].visible.sum() == 20
    assert not samples["rhd_train_00001_right"].visible[15] and samples["rhd_train_00001_right"].visible.sum() == 20
    assert samples["rhd_train_00000_left"].meta["mask_pixels"]["left"] > samples["rhd_train_00000_left"].meta["mask_pixels"]["right"]
    assert samples["rhd_train_00000_left"].meta["uv_vis_error_px"] < 1e-3
    for split, n in (("train", 3), ("test", 2)):
        man = read_manifest(out / split)
        assert (man["samples"], man["dataset"], man["split"], man["joint_order"], man["hand_choice"], man["skipped"]["count"]) == \
            (n, "rhd", split, "hand21", "mask-pixels", 0)
    res = run("verify", out)
    assert res.exit_code == 0 and res.output.count("OK") == 2, res.output


def test_rhd_tllib_hand_choice_keeps_each_usable_hand(tmp_path):
    frames = {"evaluation": {0: (-110, 110, 520, 20, 12, 300.0), 1: (-110, 110, 520, 20, 12, 300.0),
                             2: (-5, 5, 520, 20, 12, 300.0), 3: (-110, 110, 1600, 20, 12, 300.0)}}
    hidden = [(("evaluation", 1), 21 + j) for j in range(5)]              # right hand of id 1: 16 visible
    write_rhd(tmp_path, frames, invisible=hidden)
    out = tmp_path / "out"
    res = run("rhd", tmp_path / "RHD_published_v2", out, "--splits", "test", "--hand-choice", "tllib", "--crop-size", 64)
    assert res.exit_code == 0, res.output
    keys = sorted(s.key for s in iter_samples(out / "test"))
    # id 0: both hands; id 1: the right has only 16 visible joints; id 2: the right hand (further
    # away, smaller) lies > 30% inside the left one's box; id 3: both boxes under 64 px
    assert keys == ["rhd_test_00000_left", "rhd_test_00000_right", "rhd_test_00001_left", "rhd_test_00002_left"]
    assert read_manifest(out / "test")["hand_choice"] == "tllib"


def test_rhd_bad_input_names_file_and_sample(tmp_path):
    src = tmp_path / "src"
    write_rhd(src, {"training": FRAMES["training"]})
    root = src / "RHD_published_v2" / "training"
    anno_file = root / "anno_training.pickle"
    good = anno_file.read_bytes()

    anno = pickle.loads(good)
    anno[1]["xyz"][5, 0] = np.nan
    anno_file.write_bytes(pickle.dumps(anno, protocol=2))
    res = run("rhd", src, tmp_path / "o1", "--splits", "train")
    assert res.exit_code != 0
    assert "NaN" in res.output and str(anno_file) in res.output and "rhd_train_00001" in res.output

    # --skip-bad records the sample and why, and converts the rest
    res = run("rhd", src, tmp_path / "o2", "--splits", "train", "--skip-bad")
    assert res.exit_code == 0, res.output
    man = read_manifest(tmp_path / "o2" / "train")
    skips = read_skips(tmp_path / "o2" / "train")
    assert man["samples"] == 2 and len(skips) == 1
    assert skips[0]["key"].startswith("rhd_train_00001") and "NaN" in skips[0]["reason"] and skips[0]["file"] == str(anno_file)
    assert sorted(s.key for s in iter_samples(tmp_path / "o2" / "train")) == ["rhd_train_00000_left", "rhd_train_00002_right"]
    anno_file.write_bytes(good)

    color = root / "color" / "00002.png"
    color.write_bytes(color.read_bytes()[:60])                              # truncated PNG
    res = run("rhd", src, tmp_path / "o3", "--splits", "train")
    assert res.exit_code != 0 and "corrupt" in res.output and str(color) in res.output and "rhd_train_00002" in res.output

    mask = root / "mask" / "00000.png"
    mask.unlink()
    res = run("rhd", src, tmp_path / "o4", "--splits", "train", "--skip-bad")
    assert res.exit_code == 0, res.output
    skips = sorted(read_skips(tmp_path / "o4" / "train"), key=lambda s: s["reason"])
    assert len(skips) == 2 and "corrupt" in skips[0]["reason"] and skips[0]["file"] == str(color)
    assert "missing" in skips[1]["reason"] and skips[1]["file"] == str(mask) and skips[1]["key"].startswith("rhd_train_00000")

    # a pickle that would run a command when unpickled is refused before anything runs
    flag = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {flag}",))

    anno_file.write_bytes(pickle.dumps({0: Evil()}, protocol=2))
    res = run("rhd", src, tmp_path / "o5", "--splits", "train")
    assert res.exit_code != 0 and "forbidden global" in res.output and str(anno_file) in res.output
    assert not flag.exists()

    anno_file.write_bytes(pickle.dumps({0: {"xyz": np.zeros((21, 3)), "uv_vis": np.zeros((42, 3)), "K": np.eye(3)}}, protocol=2))
    res = run("rhd", src, tmp_path / "o6", "--splits", "train")
    assert res.exit_code != 0 and "shape (21, 3)" in res.output and "rhd_train_00000" in res.output
