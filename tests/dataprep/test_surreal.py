"""`dataprep surreal` on a tiny tree in SURREAL's layout (data/cmu/<split>/run<k>/<seq>/<seq>_c%04d.mp4
+ _info.mat + _segm.mat, MATLAB v5) with known world joints seen through SURREAL's mirrored camera
(det R = -1): sides must come out anatomically consistent with the image."""
import numpy as np
import pytest
import scipy.io
from click.testing import CliRunner

from shards.camera import project
from dataprep.bodies import H36M17_FLIP, SMPL_FLIP, smpl24_to_h36m17
from dataprep.cli import cli
from dataprep.surreal import surreal_camera
from shards import iter_samples, read_manifest
from tests.body_fixtures import (BLUE, GREEN, H36M17_NAMES, RED, SMPL24_NAMES, SPIN_ORDER, body_axes, check_body,
                                 disk_mask, frame_image, place, posed, raw, rot, smpl_h36m17,
                                 write_model, write_video)

W, H, F, CX, CY = 320, 240, 600.0, 160.0, 120.0
WORLD_UP = (0.0, -1.0, 0.0)            # SURREAL's camera shows world -y as up in the image
# (split, run, seq, clip) -> (frames, yaw, camLoc)
CLIPS = {("train", "run0", "01_01", "01_01_c0001"): (7, 30.0, (7.0, -0.9, 0.2)),
         ("test", "run1", "ung_02", "ung_02_c0002"): (4, 150.0, (6.0, -1.0, -0.3))}
MASK_RADIUS = 12.0


def camera(cam_loc):
    """SURREAL's extrinsic, written from its getExtrinsicBlender.m: a Blender camera whose world
    matrix rotation A is improper, converted to computer-vision axes."""
    a = np.array([[0.0, 0, 1], [0, -1, 0], [-1, 0, 0]])
    flip = np.diag([1.0, -1, -1])
    r = flip @ a.T
    assert np.isclose(np.linalg.det(r), -1)
    return r, flip @ (-a.T @ np.asarray(cam_loc))


def swap(name):
    return "r_" + name[2:] if name.startswith("l_") else "l_" + name[2:] if name.startswith("r_") else name


def clip_body(clip, f):
    """Named world joints (mm, SMPL's anatomical labels) and what the converter should produce:
    camera-frame h36m17 with sides as seen in the mirrored image, and the facing direction."""
    _, yaw, cam_loc = CLIPS[clip]
    axes = body_axes(yaw + 4 * f, up=WORLD_UP, ref=(1.0, 0.0, 0.0))
    world = place(axes, (300.0 * f / 6, -800.0, 100.0))
    r, t = camera(cam_loc)
    cam = {n: r @ p + 1000 * t for n, p in world.items()}
    apparent = {n: cam[swap(n)] for n in cam}      # the mirror image's right wrist is SMPL's left one
    return world, smpl_h36m17(apparent), r @ axes[1]


def pin(xyz):
    return np.stack([F * xyz[:, 0] / xyz[:, 2] + CX, F * xyz[:, 1] / xyz[:, 2] + CY], 1)


def write_clip(cmu, clip, joints_world_m, expected, masks=True, nan_at=None, cam_loc=None, extra=None):
    split, run, seq, name = clip
    n = len(joints_world_m)
    folder = cmu / split / run / seq
    frames, segm, j2 = [], {}, []
    r, t = camera(cam_loc)
    for f in range(n):
        u17 = pin(expected[f])
        frames.append(frame_image(W, H, {RED: u17[16], GREEN: u17[13], BLUE: u17[10]}, 50 + 20 * f, radius=7))
        labels = np.zeros((H, W), np.uint8)
        d = disk_mask(W, H, u17[0], MASK_RADIUS)
        labels[d] = 1
        labels[d & (np.mgrid[:H, :W][0] + 0.5 > u17[0, 1])] = 2
        segm[f"segm_{f + 1}"] = labels
        j2.append(np.round(pin(1000 * (joints_world_m[f] @ r.T + t))).T)
    write_video(folder / f"{name}.mp4", frames, fps=30)
    j3 = np.stack([j.T for j in joints_world_m], axis=2)                      # (3, 24, T)
    if nan_at is not None:
        j3[1, 2, nan_at] = np.nan                                              # r_hip
    info = {"joints3D": j3, "joints2D": np.stack(j2, axis=2), "camLoc": np.array(cam_loc)[:, None],
            "pose": np.zeros((72, n)), "shape": np.zeros((10, n)), "gender": np.ones((n, 1)), "zrot": np.zeros((n, 1)),
            "camDist": np.array([[cam_loc[0]]]), **(extra or {})}
    scipy.io.savemat(folder / f"{name}_info.mat", info)
    if masks:
        scipy.io.savemat(folder / f"{name}_segm.mat", segm)


def write_surreal(root, clips=CLIPS, **kw):
    cmu = root / "SURREAL" / "data" / "cmu"
    truth = {}
    for clip, (n, _, cam_loc) in clips.items():
        bodies = [clip_body(clip, f) for f in range(n)]
        truth[clip] = bodies
        write_clip(cmu, clip, [raw(w, SMPL24_NAMES) / 1000 for w, _, _ in bodies], [e for _, e, _ in bodies],
                   masks=clip[0] == "train", cam_loc=cam_loc, **kw)
    return cmu, truth


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def forward_direction(j17: np.ndarray) -> np.ndarray:
    """Unit vector the body faces: cross(thorax - pelvis, r_hip - l_hip). A left/right swap
    (or a mirror) turns it around, so it checks sides geometrically."""
    f = np.cross(j17[8] - j17[0], j17[1] - j17[4])
    return f / np.linalg.norm(f)


def test_surreal_mirrored_camera_sides_and_masks(tmp_path):
    cmu, truth = write_surreal(tmp_path)
    out = tmp_path / "out"
    res = run("surreal", tmp_path, out, "--stride", 3, "--crop-size", 96)
    assert res.exit_code == 0, res.output
    assert "surreal/val: no clips" in res.output
    samples = {s.key: s for split in ("train", "test") for s in iter_samples(out / split)}
    assert sorted(samples) == sorted([f"surreal_train_run0_01_01_c0001_{f:03d}" for f in (0, 3, 6)]
                                     + [f"surreal_test_run1_ung_02_c0002_{f:03d}" for f in (0, 3)])
    for key, s in samples.items():
        m = s.meta
        clip = next(c for c in CLIPS if c[3] == m["clip"])
        world, expected, facing = truth[clip][m["frame"]]
        # joints in camera coordinates with apparent sides; the body faces R @ its world facing
        check_body(s, expected, facing, atol_mm=0.05)
        # only a left/right relabelling separates them from SMPL's labels in camera coordinates
        r, t = camera(CLIPS[clip][2])
        smpl_cam = 1000 * (raw(world, SMPL24_NAMES) / 1000 @ r.T + t)
        np.testing.assert_allclose(s.joints3d_mm[1], smpl_cam[SMPL24_NAMES.index("l_hip")], atol=0.05)
        np.testing.assert_allclose(s.joints3d_mm[16], smpl_cam[SMPL24_NAMES.index("l_wrist")], atol=0.05)
        assert m["joints2d_vs_info_px"] <= 0.5 + 1e-6                         # joints2D = round(K (R X + t))
        assert abs(np.median(s.image) - (50 + 20 * m["frame"])) <= 3
        assert m["image_size"] == [W, H] and m["source"] == f"{clip[0]}/{clip[1]}/{clip[2]}/{clip[3]}.mp4"
        np.testing.assert_allclose(s.intrinsics[:2] / s.intrinsics[0], [1, 1], rtol=1e-6)
        if clip[0] == "train":
            scale = s.intrinsics[0] / F
            yy, xx = np.nonzero(s.mask == 255)
            assert abs(len(xx) / (np.pi * (MASK_RADIUS * scale) ** 2) - 1) < 0.1
            np.testing.assert_allclose([xx.mean() + 0.5, yy.mean() + 0.5], s.joints2d_px[0], atol=0.7)
        else:
            assert s.mask is None
    man = read_manifest(out / "train")
    assert (man["samples"], man["stride"], man["clips"], man["camera"]["det_R"], man["joint_mapping"]) == (3, 3, 1, -1, "smpl24 subset")
    res = run("verify", out)
    assert res.exit_code == 0 and res.output.count("OK") == 2, res.output


def test_surreal_mesh_regressor_option(tmp_path):
    models = tmp_path / "smpl"
    models.mkdir()
    v = write_model(models / "SMPL_MALE.npz", 1.0)
    write_model(models / "SMPL_FEMALE.npz", 0.9)
    reg = np.zeros((17, v))
    reg[np.arange(17), [24 + H36M17_NAMES.index(n) for n in SPIN_ORDER]] = 1
    np.save(tmp_path / "reg.npy", reg)
    clip = ("train", "run2", "77_03", "77_03_c0005")
    cam_loc = (6.5, -0.9, 0.0)
    r, t = camera(cam_loc)
    right, forward, up = body_axes(60.0, up=WORLD_UP, ref=(1.0, 0.0, 0.0))
    to_world = np.column_stack([-right, up, forward])
    joints, expected, poses = [], [], []
    for f in range(2):
        p = posed(1.0, 25.0 * f, 50.0)
        world = {k: to_world @ x + np.array([0.0, -0.8, 0.0]) for k, x in p.items()}
        cam = {k: 1000 * (r @ x + t) for k, x in world.items()}
        joints.append(raw(world, SMPL24_NAMES))
        expected.append((raw({n: cam[swap(n)] for n in cam}, H36M17_NAMES), r @ to_world @ rot((0, 1, 0), 25.0 * f) @ [0, 0, 1.0]))
        pose = np.zeros(72)
        pose[1], pose[19 * 3] = np.deg2rad(25.0 * f), np.deg2rad(50.0)
        poses.append(pose)
    write_clip(tmp_path / "cmu", clip, joints, [e for e, _ in expected], cam_loc=cam_loc,
               extra={"pose": np.array(poses).T, "gender": np.array([[1], [1]])})
    out = tmp_path / "out"
    res = run("surreal", tmp_path / "cmu", out, "--stride", 1, "--crop-size", 96, "--smpl-models", models,
              "--h36m-regressor", tmp_path / "reg.npy")
    assert res.exit_code == 0, res.output
    samples = sorted(iter_samples(out / "train"), key=lambda s: s.meta["frame"])
    assert len(samples) == 2
    for s, (exp, facing) in zip(samples, expected):
        check_body(s, exp, facing, atol_mm=0.05)
        assert s.meta["smpl_gender"] == "male" and s.meta["smpl_fit_mm"] < 1e-3
    assert read_manifest(out / "train")["joint_mapping"] == "h36m regressor on the SMPL mesh"


def test_surreal_bad_input_names_file_and_sample(tmp_path):
    clip = ("train", "run0", "01_01", "01_01_c0001")
    one = {clip: CLIPS[clip]}
    cmu, _ = write_surreal(tmp_path / "nan", one, nan_at=3)
    info = cmu / "train/run0/01_01/01_01_c0001_info.mat"
    res = run("surreal", tmp_path / "nan", tmp_path / "o1", "--stride", 3)
    assert res.exit_code != 0 and "joints3D frame 3 has NaN" in res.output
    assert str(info) in res.output and "surreal_train_run0_01_01_c0001_003" in res.output

    cmu, _ = write_surreal(tmp_path / "bad", one)
    info = cmu / "train/run0/01_01/01_01_c0001_info.mat"
    mat = scipy.io.loadmat(info)
    mat["joints3D"] = mat["joints3D"][:, :23]
    scipy.io.savemat(info, {k: v for k, v in mat.items() if not k.startswith("__")})
    res = run("surreal", tmp_path / "bad", tmp_path / "o2")
    assert res.exit_code != 0 and "expected (3, 24, T)" in res.output and str(info) in res.output

    info.unlink()
    res = run("surreal", tmp_path / "bad", tmp_path / "o3")
    assert res.exit_code != 0 and "_info.mat missing" in res.output and str(info) in res.output

    cmu, _ = write_surreal(tmp_path / "video", one)
    video = cmu / "train/run0/01_01/01_01_c0001.mp4"
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 3])
    res = run("surreal", tmp_path / "video", tmp_path / "o4")
    assert res.exit_code != 0 and "corrupt" in res.output and str(video) in res.output
    assert "surreal_train_run0_01_01_c0001" in res.output


def test_side_check_and_flip_tables():
    """forward_direction follows the facing; a side swap or a mirror turns it around, and
    the SMPL and h36m17 flip tables agree with each other."""
    axes = body_axes(35.0)
    named = place(axes, (0.0, 0.0, 4000.0))
    j24 = raw(named, SMPL24_NAMES)
    j17 = smpl24_to_h36m17(j24)
    np.testing.assert_allclose(j17, smpl_h36m17(named), atol=1e-9)
    assert forward_direction(j17) @ axes[1] > 0.99
    assert forward_direction(j17[H36M17_FLIP]) @ axes[1] < -0.99                # labels swapped
    mirrored = j17 * [-1, 1, 1]
    assert forward_direction(mirrored) @ (axes[1] * [-1, 1, 1]) < -0.99           # a mirror image, same labels
    assert forward_direction(mirrored[H36M17_FLIP]) @ (axes[1] * [-1, 1, 1]) > 0.99
    np.testing.assert_allclose(smpl24_to_h36m17(j24[SMPL_FLIP]), j17[H36M17_FLIP], atol=1e-9)


# Frame 0 of SURREAL's own worked example, datageneration/misc/3Dto2D/01_01_c0001_info.mat in
# gulvarol/surreal (camLoc; joints3D in world metres and joints2D in pixels, SMPL-24 order).
EXAMPLE_CAM_LOC = (6.745622, -0.983883, -1.929299)
EXAMPLE_JOINTS3D = np.array([
    (0.051231, -1.012467, -1.956575), (0.008565, -0.913053, -2.017266), (0.082448, -0.914687, -1.890778),
    (0.096167, -1.132510, -1.979893), (0.024722, -0.505457, -2.104264), (0.140737, -0.489946, -1.855404),
    (0.090736, -1.285415, -1.987754), (0.123610, -0.057628, -2.138300), (0.256470, -0.051022, -1.943916),
    (0.071409, -1.348451, -1.974985), (-0.016926, -0.005646, -2.105395), (0.167822, 0.003864, -1.828043),
    (0.116512, -1.596298, -1.986606), (0.049483, -1.493311, -2.065145), (0.161809, -1.480197, -1.911418),
    (0.060019, -1.664561, -1.965817), (-0.017820, -1.504736, -2.156244), (0.225859, -1.456905, -1.811583),
    (-0.263567, -1.340821, -2.147475), (0.271213, -1.173094, -1.779588), (-0.176934, -1.589944, -2.033649),
    (0.199892, -0.913919, -1.674080), (-0.158373, -1.685229, -2.057296), (0.188632, -0.831992, -1.620948)])
EXAMPLE_JOINTS2D = np.array([
    (162, 117), (168, 126), (157, 126), (165, 107), (176, 163), (153, 165), (165, 93), (179, 204), (161, 206),
    (164, 87), (176, 207), (151, 210), (165, 65), (172, 74), (158, 75), (163, 59), (180, 74), (149, 76),
    (179, 89), (146, 102), (169, 67), (137, 126), (171, 59), (132, 134)])


def test_surreal_camera_reproduces_the_released_example():
    """On SURREAL's released example the converter's camera maps the world joints exactly onto the
    released joints2D (round(K (R X + t)), the image y axis already pointing down as in the video),
    and the mirror (det R = -1) shows: with SMPL's labels the body faces away from where its feet
    point, with the flipped labels the converter stores it faces the same way."""
    rot, trans = surreal_camera(np.array(EXAMPLE_CAM_LOC))
    assert np.linalg.det(rot) == pytest.approx(-1.0)
    cam_mm = 1000.0 * (EXAMPLE_JOINTS3D @ rot.T + trans)
    uv = project(cam_mm, (F, F, CX, CY))
    np.testing.assert_array_equal(np.round(uv), EXAMPLE_JOINTS2D)
    assert uv[15, 1] < uv[0, 1] < uv[7, 1]                                    # head above pelvis above ankle
    feet = (cam_mm[10] + cam_mm[11] - cam_mm[7] - cam_mm[8]) / 2                # ankles -> feet: forward
    feet /= np.linalg.norm(feet)
    assert forward_direction(smpl24_to_h36m17(cam_mm)) @ feet == pytest.approx(-0.879, abs=1e-3)
    assert forward_direction(smpl24_to_h36m17(cam_mm[SMPL_FLIP])) @ feet == pytest.approx(0.879, abs=1e-3)
