"""`dataprep pw3d` on a tiny tree in 3DPW's released layout (sequenceFiles/<split>/<seq>.pkl as
Python 2 pickles + imageFiles/<seq>/image_%05d.jpg) with known SMPL joints in world metres and
per-frame camera poses; plus the SMPL mesh + H36M regressor option with a synthetic model."""
import numpy as np
from click.testing import CliRunner
from PIL import Image

from dataprep.cli import cli
from shards import iter_samples, read_manifest
from tests.body_fixtures import (BLUE, GREEN, H36M17_NAMES, RED, SMPL24_NAMES, SPIN_ORDER, body_axes, check_body,
                                 colour_centroid, frame_image, place, posed, py2_pickle, raw, rot, smpl_h36m17,
                                 write_model)

W, H = 108, 192                         # 1080x1920 portrait, / 10
K = np.array([[160.0, 0, 54.5], [0, 161.0, 95.0], [0, 0, 1]])
YELLOW, CYAN = (230, 230, 30), (30, 220, 230)
ACTOR_COLOURS = [(RED, GREEN), (YELLOW, CYAN)]   # (right wrist, left wrist) per actor
# sequence -> (split folder, frames, per actor: (yaw, pelvis x mm, campose_valid))
SEQS = {
    "outdoors_walk_00": ("train", 4, [(15.0, -450.0, [1, 1, 1, 1]), (170.0, 450.0, [1, 0, 1, 1])]),
    "downtown_test_01": ("test", 3, [(-40.0, 0.0, [1, 1, 0])]),
}
NO_2D = ("outdoors_walk_00", 0, 2)       # actor 0 has all-zero poses2d in frame 2


def camera_pose(i):
    """World (y up) -> camera (y down), turning and tilting a little every frame."""
    a, b = np.deg2rad(5 * i), np.deg2rad(4 * i + 2)
    yaw = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    tilt = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    m = np.eye(4)
    m[:3, :3] = np.diag([1.0, -1.0, -1.0]) @ yaw @ tilt
    m[:3, 3] = (0.1 * i, 1.2, 0.5)
    return m


def to_world(cam_mm, pose):
    return (cam_mm / 1000.0 - pose[:3, 3]) @ pose[:3, :3]


def truth(name, actor, frame):
    yaw, x0, _ = SEQS[name][2][actor]
    axes = body_axes(yaw + 3 * frame)
    return place(axes, (x0 + 15 * frame, 120.0, 3600.0)), axes[1]


def write_image(root, name, frame, uv_by_colour):
    p = root / "imageFiles" / name / f"image_{frame:05d}.jpg"
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame_image(W, H, uv_by_colour, 60 + 30 * frame, radius=3)).save(p, quality=98, subsampling=0)


def pin(xyz):
    return (xyz @ K.T)[:, :2] / xyz[:, 2:]


def write_pw3d(root, seqs=SEQS, nan_at=None):
    for name, (folder, n, actors) in seqs.items():
        poses = [camera_pose(i) for i in range(n)]
        joints, valid, poses2d = [], [], []
        for a, (_, _, val) in enumerate(actors):
            per_frame = []
            for i in range(n):
                named, _ = truth(name, a, i)
                per_frame.append(to_world(raw(named, SMPL24_NAMES), poses[i]).ravel())
            jp = np.array(per_frame)
            if nan_at == (name, a):
                jp[1, 7] = jp[2, 7] = np.nan      # frame 1 has no valid camera pose for actor 1
            joints.append(jp)
            valid.append(np.array(val, np.float64))
            p2d = np.ones((n, 3, 18))
            if (name, a) == NO_2D[:2]:
                p2d[NO_2D[2]] = 0
            poses2d.append(p2d)
        for i in range(n):
            dots = {}
            for a in range(len(actors)):
                u = pin(smpl_h36m17(truth(name, a, i)[0]))
                dots.update({ACTOR_COLOURS[a][0]: u[16], ACTOR_COLOURS[a][1]: u[13], BLUE: u[10]})
            write_image(root, name, i, dots)
        seq = {"sequence": name, "genders": ["m", "f"][:len(actors)], "betas": [np.zeros(10)] * len(actors),
               "poses": [np.zeros((n, 72))] * len(actors), "trans": [np.zeros((n, 3))] * len(actors),
               "jointPositions": joints, "poses2d": poses2d, "cam_poses": np.array(poses), "campose_valid": valid,
               "cam_intrinsics": K, "img_frame_ids": np.arange(n) * 2}
        p = root / "sequenceFiles" / folder / f"{name}.pkl"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(py2_pickle(seq))


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_pw3d_converts_the_released_layout(tmp_path):
    src, out = tmp_path / "3DPW", tmp_path / "out"
    write_pw3d(src)
    res = run("pw3d", src, out, "--crop-size", 96)
    assert res.exit_code == 0, res.output
    assert "pw3d/val: no" in res.output                                   # no validation sequences here
    samples = {s.key: s for split in ("train", "test") for s in iter_samples(out / split)}
    assert sorted(samples) == sorted([f"pw3d_train_outdoors_walk_00_{i:05d}_a0" for i in range(4)]
                                     + [f"pw3d_train_outdoors_walk_00_{i:05d}_a1" for i in (0, 2, 3)]
                                     + [f"pw3d_test_downtown_test_01_{i:05d}_a0" for i in (0, 1)])
    for key, s in samples.items():
        m = s.meta
        named, facing = truth(m["sequence"], m["actor"], m["frame"])
        expected = smpl_h36m17(named)
        check_body(s, expected, facing, atol_mm=0.05, wrists=False)
        # exact joints straight from SMPL; the approximated ones as documented
        np.testing.assert_allclose(s.joints3d_mm[[0, 1, 3, 4, 6, 13, 16]],
                                   raw(named, ["pelvis", "r_hip", "r_ankle", "l_hip", "l_ankle", "l_wrist", "r_wrist"]), atol=0.05)
        assert m["approximated_joints"] == [7, 8, 9, 10] and m["joint_mapping"] == "smpl24 subset"
        for colour, joint in zip(ACTOR_COLOURS[m["actor"]], (16, 13)):
            assert np.abs(colour_centroid(s.image, colour) - s.joints2d_px[joint]).max() < 1.5
        assert m["source"] == f"imageFiles/{m['sequence']}/image_{m['frame']:05d}.jpg"
        assert m["image_size"] == [W, H] and m["split"] == key.split("_")[1]
        np.testing.assert_allclose(s.intrinsics[:2] / s.intrinsics[0], [1, 161 / 160], rtol=1e-6)
    man = read_manifest(out / "train")
    assert (man["samples"], man["validity"], man["joint_mapping"], man["sequences"]) == (7, "campose_valid", "smpl24 subset", ["outdoors_walk_00"])
    assert man["smpl_approximation"]["thorax"] == "smpl neck (12)"
    res = run("verify", out)
    assert res.exit_code == 0 and res.output.count("OK") == 2, res.output

    res = run("pw3d", src, tmp_path / "out2", "--splits", "train", "--require-poses2d", "--crop-size", 64)
    assert res.exit_code == 0, res.output
    keys = sorted(s.key for s in iter_samples(tmp_path / "out2" / "train"))
    assert len(keys) == 6 and "pw3d_train_outdoors_walk_00_00002_a0" not in keys
    assert read_manifest(tmp_path / "out2" / "train")["validity"] == "campose_valid and non-zero poses2d"


def test_pw3d_mesh_regressor_option(tmp_path):
    src, models = tmp_path / "3DPW", tmp_path / "smpl"
    models.mkdir()
    scales = {"male": 1.0, "female": 0.9}
    v = write_model(models / "SMPL_MALE.npz", 1.0)
    write_model(models / "SMPL_FEMALE.npz", 0.9)
    reg = np.zeros((17, v))
    reg[np.arange(17), [24 + H36M17_NAMES.index(n) for n in SPIN_ORDER]] = 1     # SPIN's row order
    np.save(tmp_path / "J_regressor_h36m.npy", reg)
    name, n = "courtyard_mesh_00", 2
    cam_poses = [camera_pose(i) for i in range(n)]
    actors = [("m", 25.0, -450.0), ("f", 200.0, 450.0)]
    joints, smpl_poses, expected = [], [], {}
    for a, (g, yaw, x0) in enumerate(actors):
        scale = scales["male" if g == "m" else "female"]
        right, forward, up = body_axes(yaw)
        to_cam = np.column_stack([-right, up, forward])     # model axes -> camera
        root = np.array([x0, 120.0, 3600.0])
        per_frame, pose_rows = [], []
        for i in range(n):
            glob, elbow = 30.0, 40.0 + 20 * i
            p = posed(scale, glob, elbow)
            cam = {k: 1000 * to_cam @ x + root for k, x in p.items()}
            per_frame.append(to_world(raw(cam, SMPL24_NAMES), cam_poses[i]).ravel())
            pose = np.zeros(72)
            pose[1] = np.deg2rad(glob)
            pose[19 * 3] = np.deg2rad(elbow)
            pose_rows.append(pose)
            expected[(a, i)] = (raw(cam, H36M17_NAMES), to_cam @ rot((0, 1, 0), glob) @ [0, 0, 1.0])
        joints.append(np.array(per_frame))
        smpl_poses.append(np.array(pose_rows))
    for i in range(n):
        dots = {}
        for a in range(2):
            u = pin(expected[(a, i)][0])
            dots.update({ACTOR_COLOURS[a][0]: u[16], ACTOR_COLOURS[a][1]: u[13]})
        write_image(src, name, i, dots)
    seq = {"sequence": name, "genders": ["m", "f"], "betas": [np.full(10, 0.5), np.zeros(10)], "poses": smpl_poses,
           "trans": [np.zeros((n, 3))] * 2, "jointPositions": joints, "cam_poses": np.array(cam_poses),
           "campose_valid": [np.ones(n)] * 2, "cam_intrinsics": K, "poses2d": [np.ones((n, 3, 18))] * 2}
    (src / "sequenceFiles" / "test").mkdir(parents=True)
    (src / "sequenceFiles" / "test" / f"{name}.pkl").write_bytes(py2_pickle(seq))

    out = tmp_path / "out"
    res = run("pw3d", src, out, "--splits", "test", "--smpl-models", models, "--h36m-regressor",
              tmp_path / "J_regressor_h36m.npy", "--crop-size", 96)
    assert res.exit_code == 0, res.output
    samples = list(iter_samples(out / "test"))
    assert len(samples) == 4
    for s in samples:
        exp, facing = expected[(s.meta["actor"], s.meta["frame"])]
        check_body(s, exp, facing, atol_mm=0.05, wrists=False)
        for colour, joint in zip(ACTOR_COLOURS[s.meta["actor"]], (16, 13)):
            assert np.abs(colour_centroid(s.image, colour) - s.joints2d_px[joint]).max() < 1.5
        assert s.meta["smpl_gender"] == ("male", "female")[s.meta["actor"]] and s.meta["smpl_fit_mm"] < 1e-3
        assert s.meta["approximated_joints"] == []
    man = read_manifest(out / "test")
    assert (man["joint_mapping"], man["regressor_order"]) == ("h36m regressor on the SMPL mesh", "spin")

    # the wrong model for an actor does not fit its joints: a clear error, not silent garbage
    (models / "SMPL_FEMALE.npz").write_bytes((models / "SMPL_MALE.npz").read_bytes())
    res = run("pw3d", src, tmp_path / "bad", "--splits", "test", "--smpl-models", models, "--h36m-regressor",
              tmp_path / "J_regressor_h36m.npy")
    assert res.exit_code != 0 and "misses the dataset's joints" in res.output and "_a1" in res.output
    assert str(src / "sequenceFiles/test" / f"{name}.pkl") in res.output


def test_pw3d_bad_input_names_file_and_sample(tmp_path):
    one = {"outdoors_walk_00": SEQS["outdoors_walk_00"]}
    write_pw3d(tmp_path / "nan", one, nan_at=("outdoors_walk_00", 1))
    res = run("pw3d", tmp_path / "nan", tmp_path / "o1", "--splits", "train")
    pkl = tmp_path / "nan/sequenceFiles/train/outdoors_walk_00.pkl"
    assert res.exit_code != 0 and "NaN" in res.output and str(pkl) in res.output
    assert "jointPositions[1][2] has NaN" in res.output and "sample pw3d_train_outdoors_walk_00_00002_a1" in res.output

    write_pw3d(tmp_path / "img", one)
    img = tmp_path / "img/imageFiles/outdoors_walk_00/image_00003.jpg"
    img.unlink()
    res = run("pw3d", tmp_path / "img", tmp_path / "o2", "--splits", "train")
    assert res.exit_code != 0 and "missing" in res.output and str(img) in res.output
    assert "pw3d_train_outdoors_walk_00_00003_a" in res.output

    bad = tmp_path / "img/sequenceFiles/train/outdoors_walk_00.pkl"
    bad.write_bytes(b"\x80\x02cos\nsystem\n(U\x04echotR.")                  # a pickle that would run code
    res = run("pw3d", tmp_path / "img", tmp_path / "o3", "--splits", "train")
    assert res.exit_code != 0 and "forbidden global os.system" in res.output and str(bad) in res.output

    write_pw3d(tmp_path / "short", one)
    p = tmp_path / "short/sequenceFiles/train/outdoors_walk_00.pkl"
    from dataprep.common import load_pickle
    seq = load_pickle(p)
    seq["jointPositions"] = [j[:, :69] for j in seq["jointPositions"]]     # 23 joints
    p.write_bytes(py2_pickle(seq))
    res = run("pw3d", tmp_path / "short", tmp_path / "o4", "--splits", "train")
    assert res.exit_code != 0 and "'jointPositions' has shape (2, 4, 69), expected (actors, N, 72)" in res.output
