"""`dataprep stb` on a tiny tree in STB's released layout (images/B*{Counting,Random}/SK_color_%d.png,
BB_left/right_%d.png, labels/B*_{SK,BB}.mat with handPara 3 x 21 x 1500 mm) with known joints."""
import math

import numpy as np
import scipy.io
from click.testing import CliRunner
from PIL import Image

from dataprep.cli import cli
from shards import iter_samples, project, read_manifest
from shards.schema import JOINT_ORDERS
from tests.dataprep.skips import read_skips

HAND21 = JOINT_ORDERS["hand21"]
# STB's order, from its README: palm centre, then little, ring, middle, index, thumb, each MCP -> tip.
STB_NAMES = ["palm"] + [f"{f}_{p}" for f in ("little", "ring", "middle", "index", "thumb") for p in ("mcp", "pip", "dip", "tip")]
SK = (607.92271, 607.88192, 314.78337, 236.42484)
BB = (822.79041, 822.79041, 318.47345, 250.31296)
BASELINE = 120.054
DOT = np.array([230, 20, 20])    # drawn at the thumb tip
N_FRAMES, W, H = 1500, 640, 480


def rodrigues(r):
    """Rotation matrix of a rotation vector, written out (not the converter's scipy call)."""
    r = np.asarray(r, np.float64)
    theta = np.linalg.norm(r)
    kx, ky, kz = r / theta
    k = np.array([[0, -kz, ky], [kz, 0, -kx], [-ky, kx, 0]])
    return np.eye(3) + math.sin(theta) * k + (1 - math.cos(theta)) * k @ k


R_SK = rodrigues([0.00531, -0.01196, 0.00301])
T_SK = np.array([-24.0381, -0.4563, -1.2326])


def left_hand_mm() -> np.ndarray:
    """A plausible left hand in hand21 order with the STB palm centre at index 0 (mm, relative)."""
    j = np.zeros((21, 3))
    wrist = np.array([0, 45, 5])
    j[1:5] = [(22, 28, 0), (36, 14, -6), (46, -2, -10), (53, -16, -13)]
    for f, x in enumerate((20, 2, -16, -32)):
        for s in range(4):
            j[5 + 4 * f + s] = (x * (1 + 0.06 * s), -12 - (24 - 3 * f) * s, -4 * s)
    j[0] = wrist + 0.6 * (j[9] - wrist)
    return j * [-1, 1, 1]


def to_stb(h21):
    return np.stack([h21[0 if n == "palm" else HAND21.index(n)] for n in STB_NAMES])


def pose(frame, seq_no, view):
    """Ground truth of a frame in the named camera's frame (hand21 order, palm at 0), mm."""
    base = left_hand_mm() + [-40 + 12 * (frame % 5) + 8 * seq_no, 15 - 6 * (frame % 3), 430 + 20 * (frame % 4)]
    return base if view == "sk" else base + [60, 10, 100]    # the BB rig sits elsewhere


def draw(path, xyz, intr):
    """A dot where the camera sees the thumb tip. STB's calibration (Bouguet's toolbox) puts the
    centre of pixel (i, j) at (i, j), so K's projection lands on integer pixel centres."""
    fx, fy, cx, cy = intr
    u, v = fx * xyz[4, 0] / xyz[4, 2] + cx, fy * xyz[4, 1] / xyz[4, 2] + cy
    yy, xx = np.mgrid[:H, :W]
    img = np.full((H, W, 3), 110, np.uint8)
    img[(xx - u) ** 2 + (yy - v) ** 2 <= 7.0 ** 2] = DOT
    Image.fromarray(img).save(path)


def write_stb(root, seqs, n_images=3, images_level=True, bb=False):
    """STB tree; handPara covers all 1500 frames, images exist for the first `n_images`."""
    (root / "labels").mkdir(parents=True)
    for seq_no, seq in enumerate(seqs):
        d = root / "images" / seq if images_level else root / seq
        d.mkdir(parents=True)
        sk_color = np.stack([pose(f, seq_no, "sk") for f in range(N_FRAMES)])
        sk_depth = sk_color @ R_SK.T + T_SK                  # colour = R^T (depth - T)
        para = {"SK": sk_depth}
        if bb:
            para["BB"] = np.stack([pose(f, seq_no, "bb") for f in range(N_FRAMES)])
        for suffix, xyz in para.items():
            raw = np.stack([to_stb(x) for x in xyz])       # N x 21 x 3, STB order
            scipy.io.savemat(root / "labels" / f"{seq}_{suffix}.mat", {"handPara": raw.transpose(2, 1, 0)})
        for f in range(n_images):
            draw(d / f"SK_color_{f}.png", pose(f, seq_no, "sk"), SK)
            Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(d / f"SK_depth_{f}.png")
            if bb:
                draw(d / f"BB_left_{f}.png", pose(f, seq_no, "bb"), BB)
                draw(d / f"BB_right_{f}.png", pose(f, seq_no, "bb") - [BASELINE, 0, 0], BB)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def dot_centroid(image):
    hit = (image[..., 0] > 170) & (image[..., 1] < 90) & (image[..., 2] < 90)
    yy, xx = np.nonzero(hit)
    return np.array([xx.mean() + 0.5, yy.mean() + 0.5]), hit.sum()


def check_geometry(s, truth_h21, intr):
    """Mirrored truth, projection consistency, crop camera, and the thumb-tip dot."""
    np.testing.assert_allclose(s.joints3d_mm, truth_h21 * [-1, 1, 1], atol=2e-3)
    np.testing.assert_allclose(project(s.joints3d_mm.astype(np.float64), s.intrinsics), s.joints2d_px, atol=1e-3)
    fx, fy, cx, cy = intr
    uv = np.column_stack([fx * truth_h21[:, 0] / truth_h21[:, 2] + cx, fy * truth_h21[:, 1] / truth_h21[:, 2] + cy])
    scale = s.image.shape[0] / (np.ptp(uv, axis=0).max() * 1.5)
    np.testing.assert_allclose(s.intrinsics[:2], [fx * scale, fy * scale], rtol=1e-5)
    # pixel-centre (calibration) -> pixel-corner (crop) coordinates: +0.5 before the crop affine
    a = np.array(s.meta["crop_affine"])
    np.testing.assert_allclose(s.joints2d_px, (uv + 0.5) @ a[:, :2].T + a[:, 2], atol=2e-3)
    np.testing.assert_allclose(s.intrinsics[2:], a[:, :2] @ [cx + 0.5, cy + 0.5] + a[:, 2], atol=2e-3)
    assert s.meta["principal_point_shift_px"] == 0.5
    c, n = dot_centroid(s.image)
    assert n >= 8 and np.abs(c - s.joints2d_px[4]).max() < 0.8, (s.key, c, s.joints2d_px[4])


def test_stb_converts_the_released_layout(tmp_path):
    seqs = ["B1Counting", "B1Random", "B2Counting", "B2Random"]
    write_stb(tmp_path / "STB", seqs)
    out = tmp_path / "out"
    res = run("stb", tmp_path / "STB", out, "--train-seqs", "B2", "--test-seqs", "B1", "--frames", "0:3", "--crop-size", 128)
    assert res.exit_code == 0, res.output
    samples = {s.key: s for split in ("train", "test") for s in iter_samples(out / split)}
    expect = {f"stb_{'test' if seq.startswith('B1') else 'train'}_{seq}_sk_{f:04d}" for seq in seqs for f in range(3)}
    assert set(samples) == expect and len(samples) == 12
    for key, s in samples.items():
        _, split, seq, _, frame = key.split("_")
        frame, seq_no = int(frame), seqs.index(seq)
        truth = pose(frame, seq_no, "sk")
        m = s.meta
        assert (m["split"], m["sequence"], m["frame"], m["camera"], m["side"], m["mirrored"]) == (split, seq, frame, "sk", "left", True)
        assert (m["root_kind"], m["wrist_extrapolation"], m["source"]) == ("palm", None, f"images/{seq}/SK_color_{frame}.png")
        assert s.mask is None and s.visible.all() and s.image.shape == (128, 128, 3)
        check_geometry(s, truth, SK)
        # joint order from the raw STB file: raw 0 palm -> 0, raw 17 thumb MCP -> 1, raw 20 thumb
        # tip -> 4, raw 13 index MCP -> 5, raw 1 little MCP -> 17, raw 4 little tip -> 20
        raw_depth = scipy.io.loadmat(tmp_path / "STB" / "labels" / f"{seq}_SK.mat")["handPara"][:, :, frame].T
        raw_color = (raw_depth - T_SK) @ R_SK
        for raw, h21 in ((0, 0), (17, 1), (20, 4), (13, 5), (9, 9), (5, 13), (1, 17), (4, 20)):
            np.testing.assert_allclose(s.joints3d_mm[h21], raw_color[raw] * [-1, 1, 1], atol=2e-3)
    for split in ("train", "test"):
        man = read_manifest(out / split)
        assert (man["samples"], man["dataset"], man["joint_order"], man["root_kind"], man["views"], man["skipped"]["count"]) == \
            (6, "stb", "hand21", "palm", ["sk"], 0)
    assert read_manifest(out / "test")["sequences"] == ["B1Counting", "B1Random"]
    res = run("verify", out)
    assert res.exit_code == 0 and res.output.count("OK") == 2, res.output


def test_stb_stereo_views_wrist_option_and_no_images_level(tmp_path):
    seqs = ["B1Counting", "B1Random"]
    write_stb(tmp_path / "STB", seqs, n_images=2, images_level=False, bb=True)
    args = ["stb", tmp_path / "STB", None, "--splits", "test", "--views", "sk,bb_left,bb_right", "--frames", "0:2",
            "--root", "wrist", "--wrist-ref", "middle_mcp", "--wrist-factor", 2.2, "--crop-size", 96]
    res = run(*[tmp_path / "out" if a is None else a for a in args])
    assert res.exit_code == 0, res.output
    samples = {s.key: s for s in iter_samples(tmp_path / "out" / "test")}
    assert len(samples) == 2 * 3 * 2
    for key, s in samples.items():
        parts = key.split("_")                                     # stb_test_<seq>_<view>_<frame>
        seq, view, frame = parts[2], "_".join(parts[3:-1]), int(parts[-1])
        truth = pose(frame, seqs.index(seq), "sk" if view == "sk" else "bb")
        if view == "bb_right":
            truth = truth - [BASELINE, 0, 0]
        truth = truth.copy()
        truth[0] = truth[9] + 2.2 * (truth[0] - truth[9])            # wrist from the middle MCP
        check_geometry(s, truth, SK if view == "sk" else BB)
        assert s.meta["root_kind"] == "wrist" and s.meta["wrist_extrapolation"] == {"from": "middle_mcp", "factor": 2.2}
        assert s.meta["source"] == f"{seq}/{ {'sk': 'SK_color', 'bb_left': 'BB_left', 'bb_right': 'BB_right'}[view]}_{frame}.png"
    left, right = samples["stb_test_B1Random_bb_left_0001"], samples["stb_test_B1Random_bb_right_0001"]
    np.testing.assert_allclose(right.joints3d_mm[:, 0], left.joints3d_mm[:, 0] + BASELINE, atol=2e-3)  # mirrored x
    man = read_manifest(tmp_path / "out" / "test")
    assert man["wrist_extrapolation"] == {"from": "middle_mcp", "factor": 2.2} and man["views"] == ["sk", "bb_left", "bb_right"]
    # two worker processes write the same shards as one
    res = run(*[tmp_path / "out2" if a is None else a for a in args], "--workers", 2)
    assert res.exit_code == 0, res.output
    assert [x["sha256"] for x in read_manifest(tmp_path / "out2" / "test")["shards"]] == [x["sha256"] for x in man["shards"]]


def test_stb_bad_input_names_file_and_sample(tmp_path):
    root = tmp_path / "STB"
    write_stb(root, ["B1Counting", "B1Random"])
    base = ["stb", root, None, "--splits", "test", "--frames", "0:3", "--crop-size", 64]

    def go(out, *extra):
        return run(*[tmp_path / out if a is None else a for a in base], *extra)

    mat = root / "labels" / "B1Counting_SK.mat"
    para = scipy.io.loadmat(mat)["handPara"]
    bad = para.copy()
    bad[2, 7, 1] = np.nan
    scipy.io.savemat(mat, {"handPara": bad})
    res = go("o1")
    assert res.exit_code != 0
    assert "NaN" in res.output and str(mat) in res.output and "stb_test_B1Counting_sk_0001" in res.output
    res = go("o2", "--skip-bad")
    assert res.exit_code == 0, res.output
    man = read_manifest(tmp_path / "o2" / "test")
    skips = read_skips(tmp_path / "o2" / "test")
    assert man["samples"] == 5 and [s["key"] for s in skips] == ["stb_test_B1Counting_sk_0001"]
    assert "NaN" in skips[0]["reason"] and skips[0]["file"] == str(mat)
    scipy.io.savemat(mat, {"handPara": para})

    png = root / "images" / "B1Random" / "SK_color_2.png"
    png.write_bytes(png.read_bytes()[:100])
    res = go("o3")
    assert res.exit_code != 0 and "corrupt" in res.output and str(png) in res.output and "stb_test_B1Random_sk_0002" in res.output

    res = go("o4", "--frames", "0:4", "--skip-bad")          # frame 3 has no images
    assert res.exit_code == 0, res.output
    skips = sorted(read_skips(tmp_path / "o4" / "test"), key=lambda s: s["key"])
    assert [s["key"] for s in skips] == ["stb_test_B1Counting_sk_0003", "stb_test_B1Random_sk_0002", "stb_test_B1Random_sk_0003"]
    assert "corrupt" in skips[1]["reason"] and skips[1]["file"] == str(png)
    assert all(s["reason"] == "image file missing" and s["file"].endswith("SK_color_3.png") for s in skips[::2])
    assert read_manifest(tmp_path / "o4" / "test")["skipped"]["by_reason"]["image file missing"] == 2

    scipy.io.savemat(mat, {"handPara": para[:, :20]})
    res = go("o5")
    assert res.exit_code != 0 and "shape (3, 20, 1500)" in res.output and str(mat) in res.output
    scipy.io.savemat(mat, {"handPara": para})

    res = go("o6", "--frames", "1498:1502")
    assert res.exit_code != 0 and "1500 frames" in res.output
    res = run("stb", root, tmp_path / "o7", "--splits", "train", "--train-seqs", "B3")
    assert res.exit_code != 0 and "B3Counting" in res.output and "missing" in res.output
