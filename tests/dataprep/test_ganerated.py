"""`dataprep ganerated` on a GANeratedHands_Release-layout fixture: 256x256 PNG crops, the
comma-separated txt files, known camera-frame joints and crop parameters."""

import numpy as np
from click.testing import CliRunner
from PIL import Image

from dataprep.cli import cli
from dataprep.ganerated import CX, CY, FX, FY, held_out
from shards.reader import iter_samples, read_manifest
from shards.schema import project, validate
from tests.dataprep.skips import read_skips

# A left hand in hand21 order (wrist, thumb MCP..tip, index, middle, ring, little), camera mm.
FINGER_X = {1: -38.0, 5: -22.0, 9: -4.0, 13: 13.0, 17: 28.0}


def hand_mm(center, turn):
    pts = [np.zeros(3)]
    for base, x in FINGER_X.items():
        for k in range(4):
            if base == 1:   # thumb goes sideways and forward
                pts.append(np.array([x - 14.0 * k, -18.0 - 12.0 * k, -6.0 * k]))
            else:
                pts.append(np.array([x * (1 + 0.05 * k), -70.0 - 24.0 * k, 5.0 * k]))
    pts = np.array(pts)
    c, s = np.cos(turn), np.sin(turn)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    return pts @ rot.T + np.asarray(center)


def crop_camera(xyz):
    """crop_params (u, v, s) framing the hand in a 256 crop, and the released crop camera."""
    uv = np.stack([FX * xyz[:, 0] / xyz[:, 2] + CX, FY * xyz[:, 1] / xyz[:, 2] + CY], 1)
    lo, hi = uv.min(0), uv.max(0)
    side = (hi - lo).max() * 1.3
    u0, v0 = (lo + hi) / 2 - side / 2
    s = 256 / side
    return (u0, v0, s), (s * FX, s * FY, s * (CX - u0), s * (CY - v0))


def csv(values):
    return ",".join(f"{v:.6f}" for v in np.ravel(values)) + "\n"


def draw_dot(img, u, v, colour, r=10.0):
    """Disc centred at (u, v) in pixel-corner coordinates."""
    ii, jj = np.mgrid[:img.shape[0], :img.shape[1]]
    img[(jj + 0.5 - u) ** 2 + (ii + 0.5 - v) ** 2 <= r * r] = colour


def dot_centre(img, colour):
    d = np.abs(img.astype(int) - np.array(colour)).max(axis=2) < 70
    ii, jj = np.nonzero(d)
    assert len(ii) >= 5
    return np.array([jj.mean() + 0.5, ii.mean() + 0.5])


FRAMES = {   # frame -> (hand centre mm, in-plane turn)
    "noObject/0001/0001": ((20.0, 30.0, 480.0), 0.2),
    "noObject/0001/0002": ((-40.0, 10.0, 520.0), -0.3),
    "noObject/0002/0001": ((0.0, -20.0, 450.0), 0.6),
    "withObject/0001/0001": ((35.0, 0.0, 500.0), -0.1),
}


def write_release(root):
    """GANeratedHands_Release/data/... with FRAMES plus one incomplete frame. Returns the truth."""
    rng = np.random.default_rng(0)
    truth = {}
    for frame, (center, turn) in FRAMES.items():
        base = root / "data" / frame
        base.parent.mkdir(parents=True, exist_ok=True)
        xyz = hand_mm(center, turn)
        (u0, v0, s), (fx, fy, cx, cy) = crop_camera(xyz)
        uv = np.stack([fx * xyz[:, 0] / xyz[:, 2] + cx, fy * xyz[:, 1] / xyz[:, 2] + cy], 1)
        img = rng.integers(20, 70, (256, 256, 3), dtype=np.uint8)
        draw_dot(img, *uv[0], (255, 0, 0))    # wrist
        draw_dot(img, *uv[8], (0, 255, 0))    # index tip
        Image.fromarray(img).save(f"{base}_color_composed.png")
        (root / "data" / f"{frame}_joint2D.txt").write_text(csv(uv))
        (root / "data" / f"{frame}_joint_pos_global.txt").write_text(csv(xyz))
        (root / "data" / f"{frame}_joint_pos.txt").write_text(csv((xyz - xyz[9]) / np.linalg.norm(xyz[9] - xyz[10])))
        (root / "data" / f"{frame}_crop_params.txt").write_text(csv([u0, v0, s]))
        truth[frame] = (xyz, uv, (fx, fy, cx, cy))
    # a partition that is not complete: the image exists, its txt files do not
    Image.fromarray(np.zeros((256, 256, 3), np.uint8)).save(root / "data" / "noObject/0002/0002_color_composed.png")
    (root / "data" / "noObject/0002/0002_joint2D.txt").write_text(csv(np.zeros(42)))
    return truth


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_convert_joints_units_projection_mirroring(tmp_path):
    src = tmp_path / "GANeratedHands_Release"
    truth = write_release(src)
    out = tmp_path / "out"
    r = run("ganerated", src, out, "--crop-size", 128)
    assert r.exit_code == 0, r.output
    samples = {s.meta["source"].replace("_color_composed.png", ""): s for s in iter_samples(out / "train")}
    assert sorted(samples) == sorted(FRAMES)
    for frame, s in samples.items():
        xyz, uv, (fx, fy, cx, cy) = truth[frame]
        validate(s)
        assert s.key == "ganerated_train_" + frame.replace("/", "_")
        assert s.meta["side"] == "left" and s.meta["mirrored"] is True and s.meta["joint_order"] == "hand21"
        # millimetres, hand21, mirrored: X negated, Y and Z as released
        np.testing.assert_allclose(s.joints3d_mm, xyz * [-1, 1, 1], atol=1e-3)
        np.testing.assert_allclose(project(s.joints3d_mm, s.intrinsics), s.joints2d_px, atol=1e-3)
        # crop = affine of the released 256 crop: its camera carried through
        a = np.array(s.meta["crop_affine"])
        scale = abs(a[0, 0])
        np.testing.assert_allclose(s.intrinsics[:2], [fx * scale, fy * scale], rtol=1e-5)
        np.testing.assert_allclose(s.joints2d_px, uv @ a[:, :2].T + a[:, 2], atol=1e-3)
        # the mirrored crop shows the wrist dot at joints2d[0], the index-tip dot at joints2d[8]
        assert np.abs(dot_centre(s.image, (255, 0, 0)) - s.joints2d_px[0]).max() < 0.6
        assert np.abs(dot_centre(s.image, (0, 255, 0)) - s.joints2d_px[8]).max() < 0.6
        assert s.joints2d_px[1, 0] > s.joints2d_px[17, 0]   # mirrored: thumb now right of the little finger
    m = read_manifest(out / "train")
    assert m["samples"] == 4 and m["dataset"] == "ganerated" and m["joint_order"] == "hand21"
    assert m["incomplete_frames"] == [{"frame": "noObject/0002/0002",
                                       "missing": ["joint_pos_global.txt", "crop_params.txt"]}]
    assert m["test_fraction"] == 0.0 and not (out / "test").exists()
    assert run("verify", out).exit_code == 0


def test_held_out_partitions(tmp_path):
    src = tmp_path / "rel"
    write_release(src)
    partitions = ["noObject/0001", "noObject/0002", "withObject/0001"]
    seed = next(k for k in range(100) if 0 < sum(held_out(p, 0.5, k) for p in partitions) < 3)
    out = tmp_path / "out"
    r = run("ganerated", src, out, "--crop-size", 64, "--test-fraction", 0.5, "--holdout-seed", seed)
    assert r.exit_code == 0, r.output
    test_parts = {p for p in partitions if held_out(p, 0.5, seed)}
    for split in ("train", "test"):
        got = [s.meta["source"].rsplit("/", 1)[0] for s in iter_samples(out / split)]
        want = [f.rsplit("/", 1)[0] for f in FRAMES if (f.rsplit("/", 1)[0] in test_parts) == (split == "test")]
        assert sorted(got) == sorted(want) and got
        m = read_manifest(out / split)
        assert m["partitions"] == sorted(set(want)) and m["holdout_seed"] == seed
        assert len(m["incomplete_frames"]) == (("noObject/0002" in test_parts) == (split == "test"))


def test_bad_input_errors_and_skip_bad(tmp_path):
    src = tmp_path / "rel"
    write_release(src)
    d = src / "data"
    xyz = (d / "noObject/0001/0001_joint_pos_global.txt").read_text().split(",")
    xyz[4] = "nan"
    (d / "noObject/0001/0001_joint_pos_global.txt").write_text(",".join(xyz))
    r = run("ganerated", src, tmp_path / "o1")
    assert r.exit_code == 1
    assert "NaN" in r.output and "0001_joint_pos_global.txt" in r.output and "ganerated_train_noObject_0001_0001" in r.output

    (d / "noObject/0001/0001_joint_pos_global.txt").write_text(csv(np.ones(60)))   # 20 joints
    r = run("ganerated", src, tmp_path / "o2")
    assert r.exit_code == 1 and "has 60 values, expected 63" in r.output

    (d / "noObject/0002/0001_color_composed.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    uv = np.array((d / "withObject/0001/0001_joint2D.txt").read_text().split(","), float) + 5.0
    (d / "withObject/0001/0001_joint2D.txt").write_text(csv(uv))
    r = run("ganerated", src, tmp_path / "o3", "--crop-size", 64, "--skip-bad")
    assert r.exit_code == 0, r.output
    m = read_manifest(tmp_path / "o3" / "train")
    assert m["samples"] == 1
    reasons = {s["key"]: s["reason"] for s in read_skips(tmp_path / "o3" / "train")}
    assert "has 60 values, expected 63" in reasons["ganerated_train_noObject_0001_0001"], reasons
    assert "corrupt or unreadable image" in reasons["ganerated_train_noObject_0002_0001"]
    assert "differs from the projection of joint_pos_global.txt by 5" in reasons["ganerated_train_withObject_0001_0001"]
    assert [s.meta["source"] for s in iter_samples(tmp_path / "o3" / "train")] == ["noObject/0001/0002_color_composed.png"]
