"""`dataprep h36m` on tiny trees in Human3.6M's original release layout (CDF poses, mp4 videos,
MATLAB v7.3 background-subtraction masks, metadata.xml) and in h36m-fetch's extracted-frames
layout, with one known skeleton per frame (the video reader has its own tests in test_video.py)."""
from pathlib import Path

import cdflib
import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dataprep.cli import cli
from dataprep.h36m import CAMERA_CONSTANTS
from shards import iter_samples, read_manifest
from tests.body_fixtures import (BLUE, GREEN, H36M17_NAMES, H36M32_NAMES, RED, body_axes, check_body,
                                 colour_centroid, disk_mask, frame_image, mat73_array, mat73_file, place, raw,
                                 write_video)
from tests.dataprep.skips import read_skips

SIZE = 128
# Small-image cameras written to the fixture's metadata.xml: the real ones / 8, with a stronger
# lens (k1, k2, k3, p1, p2) so that the distortion moves joints by pixels at this image size.
FIXTURE_LENS = (-4.0, 12.0, 0.0, 0.02, -0.015)
SMALL_CAMS = {cid: tuple(v[i] / 8 for i in range(4)) + FIXTURE_LENS for cid, v in CAMERA_CONSTANTS.items()}
# (subject, sequence, camera) -> video frames, pose frames, yaw at frame 0, pelvis x at frame 0 (mm)
SEQS = {
    ("S1", "Directions 1", "54138969"): (12, 10, 20.0, -200.0),
    ("S1", "Directions 1", "55011271"): (12, 10, -60.0, 150.0),
    ("S9", "Walking", "54138969"): (30, 30, 160.0, -300.0),      # walking away: seen from behind
    ("S11", "Directions", "55011271"): (6, 6, 60.0, 0.0),
}
MASKED = ("S1", "Directions 1", "54138969")
MASK_RADIUS = 9.0


# Recordings whose release file names differ from metadata.xml's action names (naming test).
NAMING_SEQS = {("S9", "WalkDog 1", "54138969"): (3, 3, 30.0, 0.0), ("S11", "Photo", "55011271"): (3, 3, -40.0, 100.0)}


def body(seq, f):
    _, _, yaw0, x0 = {**SEQS, **NAMING_SEQS}[seq]
    axes = body_axes(yaw0 + 2 * f)
    return place(axes, (x0 + 20 * f, 150.0, 4500 + 10 * f)), axes[1]


def level(f):
    return 40 + 7 * (f % 25)


def lens(uv, cam):
    """Where Human3.6M's lens model puts pinhole pixels `uv` (the release's radial-tangential
    model as Martinez et al.'s project_point_radial writes it: radial k1..k3, then tangential
    tan = p1 y + p2 x, x' = x (radial + tan) + p2 r^2, y' = y (radial + tan) + p1 r^2)."""
    fx, fy, cx, cy, k1, k2, k3, p1, p2 = cam
    x, y = (uv[:, 0] - cx) / fx, (uv[:, 1] - cy) / fy
    r2 = x ** 2 + y ** 2
    radial = 1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3
    tan = p1 * y + p2 * x
    return np.stack([fx * (x * (radial + tan) + p2 * r2) + cx, fy * (y * (radial + tan) + p1 * r2) + cy], 1)


def unlens(ud, cam):
    """The test's own inverse of `lens` (Newton steps with a numerical Jacobian)."""
    uv = ud.copy()
    for _ in range(30):
        err = lens(uv, cam) - ud
        h = 1e-4
        jx = (lens(uv + [h, 0], cam) - lens(uv - [h, 0], cam)) / (2 * h)
        jy = (lens(uv + [0, h], cam) - lens(uv - [0, h], cam)) / (2 * h)
        jac = np.stack([jx, jy], axis=-1)                # (n, 2 outputs, 2 inputs)
        uv = uv - np.linalg.solve(jac, err[..., None])[..., 0]
    return uv


def pin(xyz, cam):
    fx, fy, cx, cy = cam[:4]
    return np.stack([fx * xyz[:, 0] / xyz[:, 2] + cx, fy * xyz[:, 1] / xyz[:, 2] + cy], 1)


def write_cdf(path, pose):
    """Pose (N, 32, d) -> a CDF with variable Pose of one record (N, 32 * d), as the release has."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(pose)
    c = cdflib.cdfwrite.CDF(str(path), cdf_spec={"Majority": "Row_major"})
    c.write_var({"Variable": "Pose", "Data_Type": cdflib.cdfwrite.CDF.CDF_FLOAT, "Num_Elements": 1, "Rec_Vary": True,
                 "Dim_Sizes": [n, pose.shape[1] * pose.shape[2]]}, var_attrs={},
                var_data=pose.reshape(1, n, -1).astype(np.float32))
    c.close()


def write_metadata(path, cams, mapping=None):
    """metadata.xml with w0 and the camera ids; `mapping` (subjects, rows of (action id, subaction id,
    file per subject)) adds <mapping> and <actionnames> as the code bundle's file has them."""
    w0 = list(np.linspace(-1, 1, 264)) + [v for cid in cams for v in cams[cid]]
    items = "".join(f"<item>{cid}</item>" for cid in cams)
    names = ""
    if mapping is not None:
        subjects, rows = mapping
        tr = lambda cells: "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"   # noqa: E731
        actions = ["_ALL", "Directions", "Discussion", "Eating", "Greeting", "Phoning", "Posing", "Purchases", "Sitting",
                   "SittingDown", "Smoking", "TakingPhoto", "Waiting", "Walking", "WalkingDog", "WalkingTogether"]
        names = ("<mapping>" + tr(["", ""] + subjects) + "".join(tr(r) for r in rows) + "</mapping>"
                 "<actionnames>" + "".join(f"<item>{a}</item>" for a in actions) + "</actionnames>")
    path.write_text(f'<?xml version="1.0" encoding="utf-8"?>\n<a><w0>[{" ".join(f"{v:.12g}" for v in w0)}]</w0>'
                    f"<dbcameras><index2id>{items}</index2id></dbcameras>{names}</a>")


def write_masks(path, masks):
    """ground_truth_bs .mat: MATLAB v7.3 cell `Masks` of logical HxW masks (object references)."""
    with mat73_file(path) as f:
        refs = f.create_group("#refs#")
        ds = f.create_dataset("Masks", shape=(len(masks), 1), dtype=h5py.ref_dtype)
        for i, m in enumerate(masks):
            ds[i, 0] = mat73_array(refs, f"m{i}", m.T.astype(np.uint8), "logical").ref
        ds.attrs["MATLAB_class"] = np.bytes_("cell")


def write_original(root: Path, seqs=SEQS, nan_at=None, width=96, mapping=None):
    for seq, (n_video, n_pose, _, _) in seqs.items():
        subject, name, cam_id = seq
        cam = SMALL_CAMS[cam_id]
        pose32, frames, masks, d2 = [], [], [], []
        for f in range(n_video):
            named, _ = body(seq, f)
            j32 = raw(named, H36M32_NAMES)
            uv = pin(j32, cam)
            u17 = lens(pin(raw(named, H36M17_NAMES), cam), cam)     # the camera images through its lens
            frames.append(frame_image(SIZE, SIZE, {RED: u17[16], GREEN: u17[13], BLUE: u17[10]}, level(f)))
            masks.append(disk_mask(SIZE, SIZE, u17[0], MASK_RADIUS))
            pose32.append(j32)
            d2.append(lens(uv, cam))                               # the released D2 are distorted
        pose = np.array(pose32[:n_pose])
        if nan_at is not None and seq == nan_at[0]:
            pose[nan_at[1], 2, 1] = np.nan
        if width != 96:
            pose = pose.reshape(n_pose, -1)[:, :width].reshape(n_pose, -1, 3)
        write_cdf(root / subject / "MyPoseFeatures/D3_Positions_mono" / f"{name}.{cam_id}.cdf", pose)
        write_video(root / subject / "Videos" / f"{name}.{cam_id}.mp4", frames)
        if seq == MASKED:
            write_cdf(root / subject / "MyPoseFeatures/D2_Positions" / f"{name}.{cam_id}.cdf", np.array(d2[:n_pose]))
            write_masks(root / subject / "MySegmentsMat/ground_truth_bs" / f"{name}.{cam_id}.mat", masks)
    root.mkdir(parents=True, exist_ok=True)
    write_metadata(root / "metadata.xml", SMALL_CAMS, mapping)


def write_extras(root: Path):
    """What must be left out: a `_ALL` pose file (no video) and S11's corrupt Directions video."""
    write_cdf(root / "S1/MyPoseFeatures/D3_Positions_mono/_ALL 1.54138969.cdf", np.ones((4, 32, 3)))
    named, _ = body(("S11", "Directions", "55011271"), 0)
    write_cdf(root / "S11/MyPoseFeatures/D3_Positions_mono/Directions.54138969.cdf", np.array([raw(named, H36M32_NAMES)] * 3))
    (root / "S11/Videos").mkdir(parents=True, exist_ok=True)
    (root / "S11/Videos/Directions.54138969.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_h36m_original_release(tmp_path):
    src, out = tmp_path / "h36m", tmp_path / "out"
    write_original(src)
    write_extras(src)
    res = run("h36m", src, out, "--crop-size", 96, "--test-stride", 8, "--frames-per-item", 2, "--workers", 2)
    assert res.exit_code == 0, res.output
    samples = {s.key: s for split in ("train", "test") for s in iter_samples(out / split)}
    # metadata.xml's names: S1 "Directions 1" is Directions-1, S9 "Walking" Walking-2, S11 "Directions" Directions-2
    expected_keys = sorted([f"h36m_train_S1_Directions-1_{c}_{f:06d}" for c in ("54138969", "55011271") for f in (0, 5)]
                           + [f"h36m_test_S9_Walking-2_54138969_{f:06d}" for f in (0, 8, 16, 24)]
                           + ["h36m_test_S11_Directions-2_55011271_000000"])
    assert sorted(samples) == expected_keys
    for key, s in samples.items():
        m = s.meta
        seq = (m["subject"], m["release_name"], m["camera"])
        f = m["frame"]
        assert m["sequence"] == f"{m['action']}-{m['subaction']}"
        named, facing = body(seq, f)
        cam = SMALL_CAMS[m["camera"]]
        assert m["split"] == ("train" if m["subject"] == "S1" else "test")
        assert m["source"] == f"{m['subject']}/Videos/{m['release_name']}.{m['camera']}.mp4"
        assert m["image_size"] == [SIZE, SIZE] and m["joint_order"] == "h36m17" and m["root_kind"] == "pelvis"
        check_body(s, raw(named, H36M17_NAMES), facing)
        # the crop camera is the metadata.xml pinhole camera scaled by the crop
        scale = s.intrinsics[0] / cam[0]
        assert abs(s.intrinsics[1] / cam[1] - scale) < 1e-5
        # the right video frame: its background brightness identifies it
        assert abs(np.median(s.image) - level(f)) <= 3, (key, np.median(s.image), level(f))
        assert np.abs(colour_centroid(s.image, BLUE) - s.joints2d_px[10]).max() < 1.5
        if seq == MASKED:
            yy, xx = np.nonzero(s.mask == 255)
            assert set(np.unique(s.mask)) == {0, 255}
            assert abs(len(xx) / (np.pi * (MASK_RADIUS * scale) ** 2) - 1) < 0.12
            np.testing.assert_allclose([xx.mean() + 0.5, yy.mean() + 0.5], s.joints2d_px[0], atol=0.7)
            assert m["d2_undistorted_vs_pinhole_px"] < 1e-3
        else:
            assert s.mask is None and "d2_undistorted_vs_pinhole_px" not in m
    for split, n, stride in (("train", 4, 5), ("test", 5, 8)):
        man = read_manifest(out / split)
        assert (man["samples"], man["stride"], man["layout"], man["joint_order"]) == (n, stride, "original", "h36m17")
        assert man["skipped"]["count"] == 0 and read_skips(out / split) == []
        assert man["camera_source"] == str(src / "metadata.xml")
        assert man["camera_intrinsics"]["54138969"]["fx"] == pytest.approx(SMALL_CAMS["54138969"][0])
    assert read_manifest(out / "test")["exclude"] == ["S11/Directions.54138969"]
    assert read_manifest(out / "test")["sequences"] == ["S9/Walking.54138969", "S11/Directions.55011271"]
    res = run("verify", out)
    assert res.exit_code == 0 and res.output.count("OK") == 2, res.output


def test_h36m_undistorted_crops_match_the_released_d2(tmp_path):
    """The released D2 labels (the lens-distorted projection), pushed through the undistortion
    and the crop, equal joints2d; the image content agrees. --no-undistort keeps the old crops."""
    seq = MASKED
    src = tmp_path / "h36m"
    write_original(src, {seq: SEQS[seq]})
    d2_file = src / "S1/MyPoseFeatures/D2_Positions/Directions 1.54138969.cdf"
    d2 = np.asarray(cdflib.CDF(str(d2_file)).varget("Pose"), np.float64).reshape(-1, 32, 2)
    cam = SMALL_CAMS[seq[2]]
    h17 = [H36M32_NAMES.index(n) for n in H36M17_NAMES]
    res = run("h36m", src, tmp_path / "out", "--splits", "train", "--train-stride", 1, "--crop-size", 96)
    assert res.exit_code == 0, res.output
    samples = list(iter_samples(tmp_path / "out" / "train"))
    assert len(samples) == 10 and read_manifest(tmp_path / "out" / "train")["undistorted"] is True
    moved = []
    for s in samples:
        f = s.meta["frame"]
        a = np.array(s.meta["crop_affine"])
        released = d2[f][h17]
        ideal = unlens(released, cam)
        np.testing.assert_allclose(ideal @ a[:, :2].T + a[:, 2], s.joints2d_px, atol=2e-3)
        moved.append(np.abs(released - ideal).max())
        assert s.meta["d2_undistorted_vs_pinhole_px"] < 1e-3
        # the drawn wrists and head and the mask disk sit on their joints after undistortion (up to
        # the fixture lens warping the disks themselves; the lens moved them by 3-8 px)
        for colour, j in ((RED, 16), (GREEN, 13), (BLUE, 10)):
            assert np.abs(colour_centroid(s.image, colour) - s.joints2d_px[j]).max() < 1.0, (s.key, colour)
        yy, xx = np.nonzero(s.mask == 255)
        np.testing.assert_allclose([xx.mean() + 0.5, yy.mean() + 0.5], s.joints2d_px[0], atol=0.6)
    assert max(moved) > 3          # the fixture's lens moves joints by several original pixels

    res = run("h36m", src, tmp_path / "old", "--splits", "train", "--train-stride", 1, "--crop-size", 96, "--no-undistort")
    assert res.exit_code == 0, res.output
    assert read_manifest(tmp_path / "old" / "train")["undistorted"] is False
    for s in iter_samples(tmp_path / "old" / "train"):
        f, a = s.meta["frame"], np.array(s.meta["crop_affine"])
        released = d2[f][h17]
        assert s.meta["d2_vs_pinhole_px"] == pytest.approx(np.abs(released - unlens(released, cam)).max(), abs=2e-3)
        # distortion left in: the dots are where the lens put them, the head (furthest out) px from joints2d
        at = released @ a[:, :2].T + a[:, 2]
        for colour, j in ((RED, 16), (GREEN, 13), (BLUE, 10)):
            assert np.abs(colour_centroid(s.image, colour) - at[j]).max() < 1.0, (s.key, colour)
        assert np.abs(at[10] - s.joints2d_px[10]).max() > 1.5


def test_h36m_extracted_frames_layout(tmp_path):
    """h36m-fetch: processed/<S>/<Action>-<sub>/annot.h5 + imageSequence/<cam>/img_%06d.jpg at the
    real image sizes, with the built-in camera constants."""
    root = tmp_path / "h36m-fetch" / "processed"
    layout = {("S1", "Directions-1"): ([1, 6, 11], ("54138969", "55011271")), ("S9", "Walking-1"): ([1, 65], ("58860488",))}
    sizes = {"54138969": (1000, 1002), "55011271": (1000, 1000), "58860488": (1000, 1000)}
    truth = {}
    for (subject, action), (frames, cams) in layout.items():
        rows = {"pose/3d": [], "frame": [], "camera": []}
        for cam_id in cams:
            for fr in frames:
                named, facing = body(("S1", "Directions 1", "54138969"), fr % 12)
                rows["pose/3d"].append(raw(named, H36M32_NAMES))
                rows["frame"].append(fr)
                rows["camera"].append(int(cam_id))
                u17 = lens(pin(raw(named, H36M17_NAMES), CAMERA_CONSTANTS[cam_id]), CAMERA_CONSTANTS[cam_id])
                img = frame_image(*sizes[cam_id], {RED: u17[16], GREEN: u17[13]}, level(fr), radius=14)
                p = root / subject / action / "imageSequence" / cam_id / f"img_{fr:06d}.jpg"
                p.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img).save(p, quality=95)
                truth[(subject, cam_id, fr - 1)] = (raw(named, H36M17_NAMES), facing)
        with h5py.File(root / subject / action / "annot.h5", "w") as f:
            for k, v in rows.items():
                f.create_dataset(k, data=np.array(v))
            for cam_id in cams:   # what h36m-fetch fits to the distorted D2: close to, not equal to, the constants
                fx, fy, cx, cy = CAMERA_CONSTANTS[cam_id][:4]
                f.create_dataset(f"intrinsics/{cam_id}", data=np.array([fx + 3, cx - 1, fy + 2, cy + 1]))
    out = tmp_path / "out"
    res = run("h36m", tmp_path / "h36m-fetch", out, "--crop-size", 96)
    assert res.exit_code == 0, res.output
    samples = {s.key: s for split in ("train", "test") for s in iter_samples(out / split)}
    assert sorted(samples) == sorted([f"h36m_train_S1_Directions-1_{c}_{f:06d}" for c in ("54138969", "55011271") for f in (0, 5, 10)]
                                     + [f"h36m_test_S9_Walking-1_58860488_{f:06d}" for f in (0, 64)])
    for s in samples.values():
        m = s.meta
        expected, facing = truth[(m["subject"], m["camera"], m["frame"])]
        check_body(s, expected, facing, dot_tol_px=0.5)       # the real lens, undistorted
        assert m["layout"] == "extracted" and m["image_size"] == list(sizes[m["camera"]])
        assert m["source"].endswith(f"imageSequence/{m['camera']}/img_{m['frame'] + 1:06d}.jpg")
        assert s.intrinsics[0] / s.intrinsics[1] == pytest.approx(CAMERA_CONSTANTS[m["camera"]][0] / CAMERA_CONSTANTS[m["camera"]][1], rel=1e-6)
        assert abs(np.median(s.image) - level(m["frame"] + 1)) <= 3
    man = read_manifest(out / "train")
    assert (man["layout"], man["stride"], man["camera_source"], man["intrinsics"]) == ("extracted", 1, "built-in constants", "constants")
    # the intrinsics h36m-fetch fitted, on request; a stride on the 1-based frame numbers
    res = run("h36m", tmp_path / "h36m-fetch", tmp_path / "out2", "--splits", "test", "--intrinsics", "annot", "--test-stride", 64)
    assert res.exit_code == 0, res.output
    (s0, s64) = sorted(iter_samples(tmp_path / "out2" / "test"), key=lambda s: s.meta["frame"])
    assert (s0.meta["frame"], s64.meta["frame"]) == (0, 64)
    fx, fy = CAMERA_CONSTANTS["58860488"][:2]
    assert s0.intrinsics[0] / s0.intrinsics[1] == pytest.approx((fx + 3) / (fy + 2), rel=1e-6)


def test_h36m_bad_input_names_file_and_sample(tmp_path):
    seq = ("S1", "Directions 1", "55011271")
    only = {seq: SEQS[seq]}
    cdf = "S1/MyPoseFeatures/D3_Positions_mono/Directions 1.55011271.cdf"

    write_original(tmp_path / "nan", only, nan_at=(seq, 5))
    res = run("h36m", tmp_path / "nan", tmp_path / "o1", "--splits", "train")
    assert res.exit_code != 0 and "NaN" in res.output
    assert str(tmp_path / "nan" / cdf) in res.output and "h36m_train_S1_Directions-1_55011271_000005" in res.output

    write_original(tmp_path / "joints", only, width=90)
    res = run("h36m", tmp_path / "joints", tmp_path / "o2", "--splits", "train")
    assert res.exit_code != 0 and "[10, 90]" in res.output and "32 joints x 3" in res.output
    assert str(tmp_path / "joints" / cdf) in res.output

    src = tmp_path / "corrupt"
    write_original(src, {})
    write_extras(src)
    res = run("h36m", src, tmp_path / "o3", "--splits", "test", "--exclude", "")
    assert res.exit_code != 0 and "corrupt" in res.output
    assert str(src / "S11/Videos/Directions.54138969.mp4") in res.output and "h36m_test_S11_Directions-2_54138969" in res.output

    write_original(tmp_path / "short", only)
    video = tmp_path / "short/S1/Videos/Directions 1.55011271.mp4"
    video.unlink()
    res = run("h36m", tmp_path / "short", tmp_path / "o4", "--splits", "train")
    assert res.exit_code != 0 and "video file missing" in res.output and str(video) in res.output
    # --skip-bad records the chunk and converts the rest
    res = run("h36m", tmp_path / "short", tmp_path / "o5", "--splits", "train", "--skip-bad", "--frames-per-item", 1,
              "--train-stride", 3)
    assert res.exit_code == 0, res.output
    man = read_manifest(tmp_path / "o5" / "train")
    skips = read_skips(tmp_path / "o5" / "train")
    assert man["samples"] == 0 and len(skips) == 4 and all(s["reason"] == "video file missing" for s in skips)
    assert {s["key"] for s in skips} == {"h36m_train_S1_Directions-1_55011271"} and {s["file"] for s in skips} == {str(video)}
    assert man["skipped"]["by_reason"] == {"video file missing": 4}


def write_fetch_folder(root: Path, subject: str, folder: str, seq, cam_id: str, frames: list[int]):
    """h36m-fetch's processed/<S>/<Action>-<sub>/: annot.h5 and img_%06d.jpg (1-based) drawn
    through the real lens, for the frames of the original-layout recording `seq`."""
    d = root / "processed" / subject / folder
    cam = CAMERA_CONSTANTS[cam_id]
    rows = {"pose/3d": [], "frame": [], "camera": []}
    for f in frames:
        named, _ = body(seq, f)
        rows["pose/3d"].append(raw(named, H36M32_NAMES))
        rows["frame"].append(f + 1)
        rows["camera"].append(int(cam_id))
        u17 = lens(pin(raw(named, H36M17_NAMES), cam), cam)
        img = frame_image(1000, 1000, {RED: u17[16], GREEN: u17[13]}, level(f), radius=14)
        (d / "imageSequence" / cam_id).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / "imageSequence" / cam_id / f"img_{f + 1:06d}.jpg", quality=95)
    with h5py.File(d / "annot.h5", "w") as h:
        for k, v in rows.items():
            h.create_dataset(k, data=np.array(v))


def test_h36m_sequence_names_agree_between_layouts(tmp_path):
    """The same recordings in the original layout (release file names "WalkDog 1", "Photo") and
    in h36m-fetch's (metadata.xml names "WalkingDog-1", "TakingPhoto-2") get the same keys and
    sequence/action/subaction meta."""
    src = tmp_path / "orig"
    write_original(src, NAMING_SEQS)
    fetch = tmp_path / "fetch"
    write_fetch_folder(fetch, "S9", "WalkingDog-1", ("S9", "WalkDog 1", "54138969"), "54138969", [0, 1, 2])
    write_fetch_folder(fetch, "S11", "TakingPhoto-2", ("S11", "Photo", "55011271"), "55011271", [0, 1, 2])
    got = {}
    for name, root in (("original", src), ("extracted", fetch)):
        res = run("h36m", root, tmp_path / name, "--splits", "test", "--test-stride", 1, "--crop-size", 64)
        assert res.exit_code == 0, res.output
        got[name] = {s.key: s.meta for s in iter_samples(tmp_path / name / "test")}
    assert sorted(got["original"]) == sorted(got["extracted"]) == sorted(
        [f"h36m_test_S9_WalkingDog-1_54138969_{f:06d}" for f in range(3)]
        + [f"h36m_test_S11_TakingPhoto-2_55011271_{f:06d}" for f in range(3)])
    for key, m in got["original"].items():
        e = got["extracted"][key]
        assert (m["sequence"], m["action"], m["subaction"], m["frame"]) == (e["sequence"], e["action"], e["subaction"], e["frame"])
    assert {m["release_name"] for m in got["original"].values()} == {"WalkDog 1", "Photo"}
    assert {m["release_name"] for m in got["extracted"].values()} == {"WalkingDog-1", "TakingPhoto-2"}


def test_h36m_sequence_names_from_metadata_xml(tmp_path):
    """metadata.xml's own <mapping> is used when present; a file it does not name is an error."""
    seq = ("S9", "WalkDog 1", "54138969")
    # a mapping where "WalkDog 1" is WalkingDog's subaction 2 (the built-in table says 1)
    mapping = (["S9"], [[1, 1, "_ALL 1"], [15, 1, "WalkDog"], [15, 2, "WalkDog 1"]])
    write_original(tmp_path / "a", {seq: NAMING_SEQS[seq]}, mapping=mapping)
    res = run("h36m", tmp_path / "a", tmp_path / "oa", "--splits", "test", "--test-stride", 2, "--crop-size", 64)
    assert res.exit_code == 0, res.output
    assert sorted(s.key for s in iter_samples(tmp_path / "oa" / "test")) == \
        ["h36m_test_S9_WalkingDog-2_54138969_000000", "h36m_test_S9_WalkingDog-2_54138969_000002"]
    assert read_manifest(tmp_path / "oa" / "test")["sequence_names"] == f"{tmp_path / 'a' / 'metadata.xml'} <mapping>"
    mapping = (["S9"], [[15, 1, "WalkDog 2"]])
    write_original(tmp_path / "b", {seq: NAMING_SEQS[seq]}, mapping=mapping)
    res = run("h36m", tmp_path / "b", tmp_path / "ob", "--splits", "test")
    assert res.exit_code != 0 and "S9 has no recording named 'WalkDog 1'" in res.output
    assert str(tmp_path / "b" / "S9/MyPoseFeatures/D3_Positions_mono/WalkDog 1.54138969.cdf") in res.output
