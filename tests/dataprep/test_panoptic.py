"""`dataprep panoptic` and `dataprep panoptic-2d` on fixtures in the released CMU Panoptic layouts:
calibration_<seq>.json + hdHand3d/handRecon3D_hd%08d.json + hdImgs/00_XX/00_XX_%08d.jpg (lens
distortion included), and hand_labels / hand143_panopticdb for the 2D-only sets."""
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dataprep.cli import cli
from shards.reader import iter_samples, read_manifest
from shards.schema import project, validate
from tests.dataprep.skips import read_skips

W, H = 320, 240
K = [[260.0, 0.0, 161.3], [0.0, 258.0, 118.6], [0.0, 0.0, 1.0]]
DIST = [-0.25, 0.08, 0.0015, -0.001, 0.01]   # k1, k2, p1, p2, k3 (OpenCV order)
RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)


def rot_y(deg):
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


CAMS = {"00_00": (np.eye(3), np.array([0.0, 0.0, 60.0])),
        "00_01": (rot_y(8.0), np.array([-40.0, 0.0, 62.0]))}


def right_hand_cm(origin):
    """A right hand in hand21 order, world centimetres (world +Y points down)."""
    pts = [np.zeros(3)]
    for finger, x in enumerate([-3.5, -2.0, -0.3, 1.3, 2.8]):
        for k in range(4):
            if finger == 0:
                pts.append([x - 1.2 * k, -1.5 - 1.0 * k, -0.5 * k])
            else:
                pts.append([x * (1 + 0.06 * k), -6.5 - 2.2 * k, 0.4 * k])
    return np.array(pts, float) + origin


def left_hand_cm(origin):
    return right_hand_cm(np.zeros(3)) * [-1, 1, 1] + origin


def hand_entry(world_cm, validity=None, repro=None):
    return {"landmarks": [round(float(v), 6) for v in world_cm.ravel()],
            "averageScore": [0.61] * 21,
            "averageReproError": repro if repro is not None else [1.7] * 21,
            "validity": validity if validity is not None else [1] * 21,
            "visibility": [[0, 3, 7, 12]] * 21}


def camera_entry(name, R, t, kind="hd", panel=0, node=0):
    return {"name": name, "type": kind, "resolution": [W, H] if kind == "hd" else [640, 480],
            "panel": panel, "node": node, "K": K, "distCoef": DIST, "R": R.tolist(), "t": [[v] for v in t]}


def lens(xyz_mm):
    """cv2.projectPoints with K, DIST (OpenCV pixel-centre convention), written out here."""
    x, y = xyz_mm[:, 0] / xyz_mm[:, 2], xyz_mm[:, 1] / xyz_mm[:, 2]
    k1, k2, p1, p2, k3 = DIST
    r2 = x * x + y * y
    rad = 1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3
    xd = x * rad + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * rad + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return np.stack([K[0][0] * xd + K[0][2], K[1][1] * yd + K[1][2]], 1)


def to_cam_mm(world_cm, cam):
    R, t = CAMS[cam]
    return 10.0 * (world_cm @ R.T + t)


def draw_dot(img, u, v, colour, r=4.0):
    """Disc centred at pixel-corner coordinates (u, v)."""
    ii, jj = np.mgrid[:img.shape[0], :img.shape[1]]
    img[(jj + 0.5 - u) ** 2 + (ii + 0.5 - v) ** 2 <= r * r] = colour


def dot_centre(img, colour):
    d = np.abs(img.astype(int) - np.array(colour)).max(axis=2) < 90
    ii, jj = np.nonzero(d)
    assert len(ii) >= 5, f"no {colour} dot"
    return np.array([jj.mean() + 0.5, ii.mean() + 0.5])


# Sequences -> frames -> people; the dotted hands are the ones expected in the shards.
RIGHT0 = right_hand_cm([22.0, 5.0, 0.0])
LEFT0 = left_hand_cm([-20.0, 2.0, 5.0])     # inside 00_00, far left of 00_01's image
RIGHT0_124 = right_hand_cm([18.0, 9.0, -4.0])
LEFT3 = left_hand_cm([-22.0, 8.0, 0.0])


def write_sequence(root, seq, frames, cams_with_images, extra_cams=()):
    d = root / seq
    (d / "hdHand3d").mkdir(parents=True)
    cams = [camera_entry(f"{p:02d}_{n:02d}", np.eye(3), np.zeros(3), "vga", p, n) for p, n in ((1, 1), (1, 2))]
    cams += [camera_entry(c, *CAMS[c]) for c in cams_with_images]
    cams += [camera_entry(c, np.eye(3), np.array([0.0, 0.0, 50.0])) for c in extra_cams]
    cams.append(camera_entry("50_01", np.eye(3), np.zeros(3), "kinect-color", 50, 1))
    (d / f"calibration_{seq}.json").write_text(json.dumps({"calibDataSource": f"{seq}_calib", "cameras": cams}))
    rng = np.random.default_rng(len(seq))
    for frame, (people, dots) in frames.items():
        (d / "hdHand3d" / f"handRecon3D_hd{frame:08d}.json").write_text(json.dumps({"version": 0.5, "people": people}))
        for cam in cams_with_images:
            img = rng.integers(20, 60, (H, W, 3), dtype=np.uint8)
            for world_cm, joint, colour in dots:
                u, v = lens(to_cam_mm(world_cm, cam))[joint]
                draw_dot(img, u + 0.5, v + 0.5, colour)   # OpenCV pixel centres -> corners
            (d / "hdImgs" / cam).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / "hdImgs" / cam / f"{cam}_{frame:08d}.jpg", quality=95)


def write_dome(root):
    bad_validity = [1] * 21
    bad_validity[7] = 0
    bad_repro = [2.0] * 21
    bad_repro[3] = 1e5
    frames = {
        123: ([{"id": 0, "right_hand": hand_entry(RIGHT0), "left_hand": hand_entry(LEFT0)},
               {"id": 1, "right_hand": hand_entry(right_hand_cm([5.0, 0.0, 0.0]), validity=bad_validity)},
               {"id": 2, "left_hand": hand_entry(left_hand_cm([0.0, -3.0, 0.0]), repro=bad_repro)},
               {"id": -1, "right_hand": hand_entry(right_hand_cm([-2.0, 6.0, 0.0]))}],
              [(RIGHT0, 0, RED), (RIGHT0, 8, GREEN), (LEFT0, 0, BLUE), (LEFT0, 8, YELLOW)]),
        124: ([{"id": 0, "right_hand": hand_entry(RIGHT0_124)}], [(RIGHT0_124, 0, RED), (RIGHT0_124, 8, GREEN)]),
    }
    write_sequence(root, "171204_pose5", frames, ["00_00", "00_01"])
    write_sequence(root, "171026_pose1", {7: ([{"id": 3, "left_hand": hand_entry(LEFT3)}], [(LEFT3, 0, BLUE), (LEFT3, 8, YELLOW)])},
                   ["00_00"], extra_cams=["00_05"])   # 00_05: calibrated, but no hdImgs extracted
    return {  # key -> (world cm, camera, side)
        "panoptic_test_171204_pose5_00000123_00_00_p0_right": (RIGHT0, "00_00", "right"),
        "panoptic_test_171204_pose5_00000123_00_01_p0_right": (RIGHT0, "00_01", "right"),
        "panoptic_test_171204_pose5_00000123_00_00_p0_left": (LEFT0, "00_00", "left"),
        "panoptic_test_171204_pose5_00000124_00_00_p0_right": (RIGHT0_124, "00_00", "right"),
        "panoptic_test_171204_pose5_00000124_00_01_p0_right": (RIGHT0_124, "00_01", "right"),
        "panoptic_train_171026_pose1_00000007_00_00_p3_left": (LEFT3, "00_00", "left"),
    }


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def dome(tmp_path_factory):
    root = tmp_path_factory.mktemp("panoptic")
    expected = write_dome(root / "src")
    out = root / "out"
    r = run("panoptic", root / "src", out, "--crop-size", 96, "--workers", 2)
    assert r.exit_code == 0, r.output
    return root, expected, out


def test_samples_units_projection_undistortion_mirroring(dome):
    root, expected, out = dome
    got = {s.key: s for split in ("train", "test") for s in iter_samples(out / split)}
    assert sorted(got) == sorted(expected)
    for key, (world_cm, cam, side) in expected.items():
        s = got[key]
        validate(s)
        xyz = to_cam_mm(world_cm, cam)                       # world cm -> camera mm
        np.testing.assert_allclose(s.joints3d_mm, xyz * ([-1, 1, 1] if side == "left" else 1), atol=1e-3)
        assert 450 < s.joints3d_mm[:, 2].min() and s.joints3d_mm[:, 2].max() < 800
        np.testing.assert_allclose(project(s.joints3d_mm, s.intrinsics), s.joints2d_px, atol=2e-3)
        assert s.meta["side"] == side and s.meta["mirrored"] == (side == "left") and s.meta["camera"] == cam
        assert s.meta["joint_order"] == "hand21" and s.meta["undistorted"] is True
        # intrinsics are the calibration's pinhole K (pixel-corner convention) carried through the crop
        a = np.array(s.meta["crop_affine"])
        np.testing.assert_allclose(s.intrinsics[:2], [K[0][0] * abs(a[0, 0]), K[1][1] * a[1, 1]], rtol=1e-5)
        # the dots drawn at the lens-distorted wrist / index tip show up at joints2d in the
        # undistorted (and, for left hands, mirrored) crop ...
        c0, c8 = (RED, GREEN) if side == "right" else (BLUE, YELLOW)
        for joint, colour in ((0, c0), (8, c8)):
            assert np.abs(dot_centre(s.image, colour) - s.joints2d_px[joint]).max() < 0.7, (key, joint)
        # ... which is not where a crop ignoring the distortion would have put them
        lens_uv = lens(xyz) + 0.5
        naive = lens_uv @ a[:, :2].T + a[:, 2]
        assert np.abs(naive[[0, 8]] - s.joints2d_px[[0, 8]]).max() > 1.5


def test_splits_cameras_manifest_verify(dome):
    root, expected, out = dome
    test = read_manifest(out / "test")
    train = read_manifest(out / "train")
    assert test["samples"] == 5 and train["samples"] == 1
    assert test["sequences"] == ["171204_pose5"] and train["sequences"] == ["171026_pose1"]
    assert test["test_sequences"] == ["171204_pose5", "171204_pose6"]
    # HD cameras only, and only those with extracted images; VGA/Kinect entries ignored
    assert test["cameras"] == {"171204_pose5": ["00_00", "00_01"]} and train["cameras"] == {"171026_pose1": ["00_00"]}
    assert test["min_score"] == 0.2 and test["max_repro_error"] == 10.0 and test["joint_order"] == "hand21"
    assert {s.meta["split"] for s in iter_samples(out / "test")} == {"test"}
    r = run("verify", out)
    assert r.exit_code == 0 and "OK, 5 samples" in r.output and "OK, 1 samples" in r.output
    # options: every sequence in train, one camera
    out2 = root / "out_opts"
    r = run("panoptic", root / "src", out2, "--crop-size", 64, "--test-sequences", "", "--cameras", "00_00", "--splits", "train")
    assert r.exit_code == 0, r.output
    keys = sorted(s.key for s in iter_samples(out2 / "train"))
    assert keys == sorted(k.replace("panoptic_test_", "panoptic_train_") for k in expected if "_00_00_" in k)
    # a stricter reprojection threshold drops every hand (all joints have 1.7 px)
    r = run("panoptic", root / "src", root / "out_strict", "--max-repro-error", 1.0, "--splits", "test")
    assert r.exit_code == 0 and read_manifest(root / "out_strict" / "test")["samples"] == 0


def corrupt_copy(root, name):
    src = root / name
    shutil.copytree(root / "src", src)
    return src / "171204_pose5"


def test_bad_input(dome):
    root, _, _ = dome
    # NaN in a usable hand
    seq = corrupt_copy(root, "nan")
    p = seq / "hdHand3d" / "handRecon3D_hd00000124.json"
    data = json.loads(p.read_text())
    data["people"][0]["right_hand"]["landmarks"][4] = float("nan")
    p.write_text(json.dumps(data))
    r = run("panoptic", seq.parent, root / "o_nan", "--splits", "test")
    assert r.exit_code == 1
    assert "NaN" in r.output and str(p) in r.output and "panoptic_test_171204_pose5_00000124_00_0" in r.output
    r = run("panoptic", seq.parent, root / "o_nan2", "--splits", "test", "--skip-bad", "--crop-size", 64)
    assert r.exit_code == 0, r.output
    m = read_manifest(root / "o_nan2" / "test")
    assert m["samples"] == 3
    skips = read_skips(root / "o_nan2" / "test")
    assert sorted(s["key"] for s in skips) == ["panoptic_test_171204_pose5_00000124_00_00_p0_right",
                                               "panoptic_test_171204_pose5_00000124_00_01_p0_right"], skips
    assert all("landmarks contain NaN" in s["reason"] and s["file"] == str(p) for s in skips)

    # wrong joint count
    seq = corrupt_copy(root, "count")
    p = seq / "hdHand3d" / "handRecon3D_hd00000123.json"
    data = json.loads(p.read_text())
    data["people"][0]["left_hand"]["landmarks"] = data["people"][0]["left_hand"]["landmarks"][:60]
    p.write_text(json.dumps(data))
    r = run("panoptic", seq.parent, root / "o_count", "--splits", "test")
    assert r.exit_code == 1 and "person 0 left_hand landmarks has 60 values, expected 63" in r.output and str(p) in r.output

    # corrupt and missing images
    seq = corrupt_copy(root, "img")
    bad = seq / "hdImgs" / "00_00" / "00_00_00000123.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    gone = seq / "hdImgs" / "00_01" / "00_01_00000124.jpg"
    gone.unlink()
    r = run("panoptic", seq.parent, root / "o_img", "--splits", "test")
    assert r.exit_code == 1 and ("corrupt or unreadable image" in r.output or "image file missing" in r.output)
    r = run("panoptic", seq.parent, root / "o_img2", "--splits", "test", "--skip-bad", "--crop-size", 64)
    assert r.exit_code == 0, r.output
    m = read_manifest(root / "o_img2" / "test")
    skips = {s["key"]: s for s in read_skips(root / "o_img2" / "test")}
    assert m["samples"] == 2   # 123/00_01 right, 124/00_00 right
    # an unreadable image skips its view, named by the first hand that needed it
    bad_key, gone_key = "panoptic_test_171204_pose5_00000123_00_00_p0_left", "panoptic_test_171204_pose5_00000124_00_01_p0_right"
    assert sorted(skips) == [bad_key, gone_key], skips
    assert "corrupt or unreadable image" in skips[bad_key]["reason"] and skips[bad_key]["file"] == str(bad)
    assert skips[gone_key]["reason"] == "image file missing" and skips[gone_key]["file"] == str(gone)


# -- 2D-only hand_labels ---------------------------------------------------------------------------
def hand_pts_2d(cx, cy, scale):
    xyz = right_hand_cm(np.zeros(3))
    return np.stack([cx + scale * xyz[:, 0], cy + scale * xyz[:, 1]], 1)


def write_hand_labels(root):
    """manual_train (a left and a right hand), manual_test, synth2 and panopticdb, with a dot at
    each wrist. Returns key -> (uv in the source image, flags, side)."""
    rng = np.random.default_rng(3)
    expected = {}

    def image(path, uv):
        # labels are OpenCV pixel coordinates (integer = pixel centre): the dots are drawn there,
        # which is +0.5 in the pixel-corner coordinates draw_dot takes
        img = rng.integers(20, 60, (180, 240, 3), dtype=np.uint8)
        draw_dot(img, *(uv[0] + 0.5), RED)
        draw_dot(img, *(uv[8] + 0.5), GREEN)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path, quality=95)

    def manual(folder, name, split, set_name, is_left, cx, cy, drop=()):
        uv = hand_pts_2d(cx, cy, 6.0)
        if is_left:
            uv[:, 0] = 2 * cx - uv[:, 0]
        flags = np.ones(21)
        flags[list(drop)] = 0
        pts = np.column_stack([uv, flags])
        pts[list(drop), :2] = 0.0   # unannotated joints are stored as (0, 0, 0)
        image(root / folder / f"{name}.jpg", uv)
        (root / folder / f"{name}.json").write_text(json.dumps(
            {"hand_pts": pts.tolist(), "is_left": is_left, "hand_box_center": [cx, cy - 30.0]}))
        stem = name.replace(".", "_")
        expected[f"panoptic2d_{split}_{set_name}_{stem}"] = (pts[:, :2], flags > 0, "left" if is_left else "right")

    manual("hand_labels/manual_train", "Ricki_unit_8.flv_000003_l", "train", "manual_train", 1, 120, 120)
    manual("hand_labels/manual_train", "Berry_roof_story.flv_000053_r", "train", "manual_train", 0, 100, 130, drop=(19, 20))
    manual("hand_labels/manual_test", "000015774_01_l", "test", "manual_test", 1, 140, 110)
    manual("hand_labels_synth/synth2", "00000001", "train", "synth2", 0, 110, 120)
    entries = []
    for i, (cx, cy) in enumerate([(90, 120), (150, 125)]):
        uv = hand_pts_2d(cx, cy, 5.0)
        image(root / "hand143_panopticdb" / "imgs" / f"{i:08d}.jpg", uv)
        pts = np.column_stack([uv, np.ones(21)])
        entries.append({"dataset": "hand143_panopticdb", "img_paths": f"imgs/{i:08d}.jpg", "img_width": 240,
                        "img_height": 180, "objpos": [cx, cy - 30.0], "scale_provided": 0.4, "joint_self": pts.tolist()})
        expected[f"panoptic2d_train_panopticdb_{i:08d}"] = (uv, np.ones(21, bool), "right")
    (root / "hand143_panopticdb" / "hands_v143_14817.json").write_text(json.dumps({"root": entries}))
    return expected


def test_hand_labels_2d_only(tmp_path):
    expected = write_hand_labels(tmp_path / "src")
    out = tmp_path / "out"
    r = run("panoptic-2d", tmp_path / "src", out, "--crop-size", 96, "--train-sets", "manual_train,panopticdb,synth2")
    assert r.exit_code == 0, r.output
    got = {s.key: s for split in ("train", "test") for s in iter_samples(out / split)}
    assert sorted(got) == sorted(expected)
    assert read_manifest(out / "train")["samples"] == 5 and read_manifest(out / "test")["samples"] == 1
    for key, (uv, flags, side) in expected.items():
        s = got[key]
        validate(s)
        assert s.joints3d_mm is None and s.intrinsics is None and s.meta["has_3d"] is False
        np.testing.assert_array_equal(s.visible, flags)
        a = np.array(s.meta["crop_affine"])
        # label (u, v) names the pixel centred there: (u + 0.5, v + 0.5) in the crops' corner coordinates
        np.testing.assert_allclose(s.joints2d_px, (uv + 0.5) @ a[:, :2].T + a[:, 2], atol=1e-3)
        assert s.meta["side"] == side and s.meta["mirrored"] == (side == "left") and s.meta["label_shift_px"] == 0.5
        assert np.abs(dot_centre(s.image, RED) - s.joints2d_px[0]).max() < 0.3
        assert np.abs(dot_centre(s.image, GREEN) - s.joints2d_px[8]).max() < 0.3
        assert s.joints2d_px[1, 0] < s.joints2d_px[17, 0]   # every stored hand is a right hand (as drawn)
    assert got["panoptic2d_train_panopticdb_00000000"].meta["side_source"].startswith("assumed")
    assert run("verify", out).exit_code == 0
    # default train sets leave synth out
    r = run("panoptic-2d", tmp_path / "src", tmp_path / "out_default", "--crop-size", 64, "--splits", "train")
    assert r.exit_code == 0 and read_manifest(tmp_path / "out_default" / "train")["sets"] == ["manual_train", "panopticdb"]
    assert read_manifest(tmp_path / "out_default" / "train")["samples"] == 4


def test_hand_labels_bad_side_and_skip_bad(tmp_path):
    write_hand_labels(tmp_path / "src")
    p = tmp_path / "src" / "hand_labels" / "manual_test" / "000015774_01_l.json"
    data = json.loads(p.read_text())
    data["is_left"] = 2
    p.write_text(json.dumps(data))
    r = run("panoptic-2d", tmp_path / "src", tmp_path / "o", "--splits", "test")
    assert r.exit_code == 1 and "unknown hand side is_left=2" in r.output and str(p) in r.output
    r = run("panoptic-2d", tmp_path / "src", tmp_path / "o2", "--splits", "test", "--skip-bad")
    assert r.exit_code == 0, r.output
    m = read_manifest(tmp_path / "o2" / "test")
    skips = read_skips(tmp_path / "o2" / "test")
    assert m["samples"] == 0 and "unknown hand side" in skips[0]["reason"] and skips[0]["file"] == str(p)
    assert skips[0]["key"].startswith("panoptic2d_test_")
