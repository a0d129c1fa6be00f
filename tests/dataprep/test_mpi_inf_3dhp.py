"""`dataprep mpi_inf_3dhp` on tiny trees in MPI-INF-3DHP's layouts: training S*/Seq*/ (annot.mat v5
cells, camera.calibration, imageSequence/video_c.avi, FGmasks/video_c.avi) and the test set
(TS*/annot_data.mat v7.3, imageSequence/img_%06d.jpg), with known joints in both raw orders."""
import numpy as np
import pytest
import scipy.io
from click.testing import CliRunner
from PIL import Image

from dataprep.cli import cli
from dataprep.mpi_inf_3dhp import MPI28_TO_H36M17, TEST17_TO_H36M17
from shards import iter_samples, read_manifest
from tests.body_fixtures import (BLUE, GREEN, H36M17_NAMES, MPI17_NAMES, MPI28_NAMES, RED, body_axes, check_body,
                                 disk_mask, frame_image, mat73_array, mat73_file, place, raw, write_video)

SIZE = 96
TRAIN_K = {0: (70.2, 70.0, 48.3, 47.6), 1: (69.5, 69.9, 47.1, 48.8)}     # 2048 px cameras scaled to 96
N_ROWS, N_VIDEO = 14, 10                   # the annotation outlasts the video
MASK_RADIUS = 7.0
# test sequence -> (image width, height, K, valid_frame)
TESTSETS = {"TS1": (96, 96, (70.1, 70.3, 47.5, 49.0), [1, 0, 1, 1, 0, 1]),
            "TS5": (120, 68, (105.0, 104.2, 58.7, 33.1), [1, 1, 0])}


def train_body(cam, f):
    axes = body_axes(-30 + 130 * cam + 4 * f)
    return place(axes, (-150 + 30 * f, 100.0, 3000.0)), axes[1]


def ts_body(ts, f):
    axes = body_axes(20 + 5 * f if ts == "TS1" else 200 - 5 * f)
    depth = 3200.0 if ts == "TS1" else 3800.0
    return place(axes, (-100 + 40 * f, 150.0 if ts == "TS1" else 50.0, depth)), axes[1]


def pin(xyz, k):
    fx, fy, cx, cy = k
    return np.stack([fx * xyz[:, 0] / xyz[:, 2] + cx, fy * xyz[:, 1] / xyz[:, 2] + cy], 1)


def univ(named):
    """A 'universal skeleton' rescaling about the pelvis, so the two 3D annotations differ."""
    return {n: named["pelvis"] + 0.93 * (p - named["pelvis"]) for n, p in named.items()}


def calibration_text(cams):
    lines = ["Skeletool Camera Calibration File V1.0"]
    for c in range(14):
        fx, fy, cx, cy = cams.get(c, (1500.0, 1500.0, 1024.0, 1024.0))
        lines += [f"name          {c}", "  sensor      10 10", "  size        2048 2048", "  animated    0",
                  f"  intrinsic   {fx} 0 {cx} 0 0 {fy} {cy} 0 0 0 1 0 0 0 0 1 ",
                  "  extrinsic   1 0 0 0 0 1 0 0 0 0 1 4000 0 0 0 1 ", "  radial      0"]
    return "\n".join(lines) + "\n"


def write_train(root, nan_at=None, width=84):
    seq_dir = root / "S1" / "Seq1"
    (seq_dir / "imageSequence").mkdir(parents=True)
    cells = {k: np.empty((14, 1), object) for k in ("annot2", "annot3", "univ_annot3")}
    for c in range(14):
        cells["annot2"][c, 0] = np.zeros((N_ROWS, 56))
        cells["annot3"][c, 0] = np.zeros((N_ROWS, 84))
        cells["univ_annot3"][c, 0] = np.zeros((N_ROWS, 84))
    for cam, k in TRAIN_K.items():
        frames, masks = [], []
        for f in range(N_ROWS):
            named, _ = train_body(cam, f)
            j28 = raw(named, MPI28_NAMES)
            cells["annot3"][cam, 0][f] = j28.ravel()
            cells["univ_annot3"][cam, 0][f] = raw(univ(named), MPI28_NAMES).ravel()
            cells["annot2"][cam, 0][f] = pin(j28, k).ravel()
            u17 = pin(raw(named, H36M17_NAMES), k)
            if f < N_VIDEO:
                frames.append(frame_image(SIZE, SIZE, {RED: u17[16], GREEN: u17[13], BLUE: u17[10]}, 50 + 15 * f))
                m = np.zeros((SIZE, SIZE, 3), np.uint8)
                m[disk_mask(SIZE, SIZE, u17[0], MASK_RADIUS), 0] = 255          # R: the person
                m[:20, :20, 1] = 255                                              # G: something else
                masks.append(m)
        write_video(seq_dir / "imageSequence" / f"video_{cam}.avi", frames, fps=25, codec="libx264")
        if cam == 0:
            write_video(seq_dir / "FGmasks" / f"video_{cam}.avi", masks, fps=25, codec="libx264")
    if nan_at is not None:
        cells["annot3"][nan_at[0], 0][nan_at[1], 3 * 23 + 1] = np.nan           # right hip
    if width != 84:
        cells["annot3"][0, 0] = cells["annot3"][0, 0][:, :width]
    scipy.io.savemat(seq_dir / "annot.mat", {**cells, "cameras": np.arange(14)[None], "frames": np.arange(N_ROWS)[:, None]})
    (seq_dir / "camera.calibration").write_text(calibration_text(TRAIN_K))


def write_testset(root):
    for ts, (w, h, k, valid) in TESTSETS.items():
        d = root / "mpi_inf_3dhp_test_set" / ts
        (d / "imageSequence").mkdir(parents=True)
        a2, a3, u3 = [], [], []
        for f in range(len(valid)):
            named, _ = ts_body(ts, f)
            a3.append(raw(named, MPI17_NAMES))
            u3.append(raw(univ(named), MPI17_NAMES))
            a2.append(pin(a3[-1], k))
            u17 = pin(raw(named, H36M17_NAMES), k)
            img = frame_image(w, h, {RED: u17[16], GREEN: u17[13]}, 40 + 25 * f)
            Image.fromarray(img).save(d / "imageSequence" / f"img_{f + 1:06d}.jpg", quality=98, subsampling=0)
        with mat73_file(d / "annot_data.mat") as mat:
            mat73_array(mat, "annot2", np.array(a2)[:, None])
            mat73_array(mat, "annot3", np.array(a3)[:, None])
            mat73_array(mat, "univ_annot3", np.array(u3)[:, None])
            mat73_array(mat, "valid_frame", np.array(valid, float)[:, None])


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_mpi_inf_3dhp_train_and_test(tmp_path):
    src, out = tmp_path / "mpi_inf_3dhp", tmp_path / "out"
    write_train(src)
    write_testset(src)
    res = run("mpi_inf_3dhp", src, out, "--cameras", "0,1", "--train-stride", 3, "--frames-per-item", 2, "--crop-size", 96)
    assert res.exit_code == 0, res.output
    train = {s.key: s for s in iter_samples(out / "train")}
    # rows 0, 3, 6, 9 of 14: row 12 has no video frame
    assert sorted(train) == [f"mpi3dhp_train_S1_Seq1_c{c}_{f:06d}" for c in (0, 1) for f in (0, 3, 6, 9)]
    for s in train.values():
        cam, f = s.meta["camera"], s.meta["frame"]
        named, facing = train_body(cam, f)
        check_body(s, raw(named, H36M17_NAMES), facing)
        assert abs(np.median(s.image) - (50 + 15 * f)) <= 3                     # the right video frame
        assert s.intrinsics[0] / s.intrinsics[1] == pytest.approx(TRAIN_K[cam][0] / TRAIN_K[cam][1], rel=1e-6)
        assert s.meta["source"] == f"S1/Seq1/imageSequence/video_{cam}.avi"
        if cam == 0:   # FGmasks: the R channel's disk at the pelvis, not the G square
            scale = s.intrinsics[0] / TRAIN_K[0][0]
            yy, xx = np.nonzero(s.mask == 255)
            assert abs(len(xx) / (np.pi * (MASK_RADIUS * scale) ** 2) - 1) < 0.15
            np.testing.assert_allclose([xx.mean() + 0.5, yy.mean() + 0.5], s.joints2d_px[0], atol=0.8)
        else:
            assert s.mask is None
    test = {s.key: s for s in iter_samples(out / "test")}
    assert sorted(test) == ["mpi3dhp_test_TS1_000000", "mpi3dhp_test_TS1_000002", "mpi3dhp_test_TS1_000003",
                            "mpi3dhp_test_TS1_000005", "mpi3dhp_test_TS5_000000", "mpi3dhp_test_TS5_000001"]
    for s in test.values():
        ts, f = s.meta["sequence"], s.meta["frame"]
        w, h, k, _ = TESTSETS[ts]
        named, facing = ts_body(ts, f)
        check_body(s, raw(named, H36M17_NAMES), facing)
        assert s.meta["image_size"] == [w, h] and s.meta["source"] == f"{ts}/imageSequence/img_{f + 1:06d}.jpg"
        assert abs(np.median(s.image) - (40 + 25 * f)) <= 3
        assert s.meta["intrinsics_fit_residual_px"] < 1e-3
    man = read_manifest(out / "test")
    for ts, (_, _, k, _) in TESTSETS.items():       # the least-squares fit recovers the cameras
        np.testing.assert_allclose(man["fitted_intrinsics"][ts]["fx_fy_cx_cy"], k, atol=1e-3)
    man_train = read_manifest(out / "train")
    assert (man_train["samples"], man_train["stride"], man_train["cameras"], man_train["annot3"]) == (8, 3, [0, 1], "annot3")
    assert man["samples"] == 6 and man["frames"] == "valid_frame only"
    res = run("verify", out)
    assert res.exit_code == 0 and res.output.count("OK") == 2, res.output

    # univ_annot3 as the ground truth: the rescaled skeleton, still self-consistent
    res = run("mpi_inf_3dhp", src, tmp_path / "univ", "--splits", "test", "--annot3", "univ_annot3", "--crop-size", 64)
    assert res.exit_code == 0, res.output
    for s in iter_samples(tmp_path / "univ" / "test"):
        named, facing = ts_body(s.meta["sequence"], s.meta["frame"])
        check_body(s, raw(univ(named), H36M17_NAMES), facing, wrists=False)
    assert read_manifest(tmp_path / "univ" / "test")["annot3"] == "univ_annot3"


def test_mpi_inf_3dhp_bad_input_names_file_and_sample(tmp_path):
    write_train(tmp_path / "nan", nan_at=(0, 3))
    res = run("mpi_inf_3dhp", tmp_path / "nan", tmp_path / "o1", "--splits", "train", "--cameras", "0,1", "--train-stride", 3)
    assert res.exit_code != 0 and "NaN" in res.output and "sample mpi3dhp_train_S1_Seq1_c0_000003" in res.output
    assert str(tmp_path / "nan/S1/Seq1/annot.mat") in res.output

    write_train(tmp_path / "width", width=81)
    res = run("mpi_inf_3dhp", tmp_path / "width", tmp_path / "o2", "--splits", "train", "--cameras", "0")
    assert res.exit_code != 0 and "expected (F, 84) = 28 joints x 3" in res.output
    assert str(tmp_path / "width/S1/Seq1/annot.mat") in res.output

    write_train(tmp_path / "video")
    video = tmp_path / "video/S1/Seq1/imageSequence/video_1.avi"
    video.write_bytes(b"RIFF\x00\x00\x00\x00AVI LIST" + bytes(300))
    res = run("mpi_inf_3dhp", tmp_path / "video", tmp_path / "o3", "--splits", "train", "--cameras", "1")
    assert res.exit_code != 0 and "corrupt" in res.output and str(video) in res.output and "mpi3dhp_train_S1_Seq1_c1" in res.output

    (tmp_path / "video/S1/Seq1/camera.calibration").unlink()
    res = run("mpi_inf_3dhp", tmp_path / "video", tmp_path / "o4", "--splits", "train")
    assert res.exit_code != 0 and "camera.calibration missing" in res.output

    write_testset(tmp_path / "ts")
    anno = tmp_path / "ts/mpi_inf_3dhp_test_set/TS5/annot_data.mat"
    scipy.io.savemat(anno, {"annot2": np.zeros((3, 1, 17, 2))})                    # a v5 file, not v7.3
    res = run("mpi_inf_3dhp", tmp_path / "ts", tmp_path / "o5", "--splits", "test")
    assert res.exit_code != 0 and "not MATLAB v7.3" in res.output and str(anno) in res.output

    img = tmp_path / "ts/mpi_inf_3dhp_test_set/TS1/imageSequence/img_000004.jpg"
    img.unlink()
    res = run("mpi_inf_3dhp", tmp_path / "ts", tmp_path / "o6", "--splits", "test", "--test-sequences", "TS1")
    assert res.exit_code != 0 and "missing" in res.output and str(img) in res.output and "mpi3dhp_test_TS1_000003" in res.output


def test_joint_tables_agree_with_the_official_17_joint_subset():
    """The test set's 17 joints are rows of the training set's 28 (MPI-INF-3DHP's
    mpii_get_joints('relevant'); 0-based as mmpose's preprocess_mpi_inf_3dhp.py lists them), so
    the two tables must pick the same joints for h36m17."""
    relevant = np.array([7, 5, 14, 15, 16, 9, 10, 11, 23, 24, 25, 18, 19, 20, 4, 3, 6])
    np.testing.assert_array_equal(relevant[TEST17_TO_H36M17], MPI28_TO_H36M17)
    np.testing.assert_array_equal(MPI28_TO_H36M17, [4, 23, 24, 25, 18, 19, 20, 3, 5, 6, 7, 9, 10, 11, 14, 15, 16])
