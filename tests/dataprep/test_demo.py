"""The embedded demo generator: FreiHAND / RHD / ImageNet-val layouts as the converters read them,
labels that land on the rendered hands, a measurable domain gap, determinism."""
import hashlib
import json
import pickle

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageFilter

from dataprep.cli import cli
from dataprep.synthetic import generate_demo
from shards import iter_samples, project, read_manifest

N_SRC, N_SRC_TEST, N_TGT, N_TGT_TEST, N_BG = 4, 2, 6, 2, 6


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    paths = generate_demo(root, source_size=N_SRC, target_train=N_TGT, target_test=N_TGT_TEST, seed=3,
                          source_test=N_SRC_TEST, backgrounds=N_BG, workers=1)
    return root, paths


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def uv_of(xyz_m, k):
    uvw = np.asarray(xyz_m) @ np.asarray(k).T
    return uvw[:, :2] / uvw[:, 2:]


def test_source_is_freihand_layout_with_labels_on_the_hand(demo):
    root, paths = demo
    src = paths.source
    assert src == root / "FreiHAND_pub_v2"
    assert sorted(p.name for p in (src / "training" / "rgb").iterdir()) == [f"{i:08d}.jpg" for i in range(4 * N_SRC)]
    assert sorted(p.name for p in (src / "training" / "mask").iterdir()) == [f"{i:08d}.jpg" for i in range(N_SRC)]
    assert sorted(p.name for p in (src / "evaluation" / "rgb").iterdir()) == [f"{i:08d}.jpg" for i in range(N_SRC_TEST)]
    for folder, n in (("training", N_SRC), ("evaluation", N_SRC_TEST)):
        xyz = np.array(json.loads((src / f"{folder}_xyz.json").read_text()))
        k = np.array(json.loads((src / f"{folder}_K.json").read_text()))
        scale = np.array(json.loads((src / f"{folder}_scale.json").read_text()))
        assert xyz.shape == (n, 21, 3) and k.shape == (n, 3, 3) and scale.shape == (n,)
        # FreiHAND's pixel-centre convention: the renderer's centre 112 (pixel corners) is 111.5
        assert np.all(k[:, 0, 2] == 111.5) and np.all(k[:, 1, 2] == 111.5) and np.all(k[:, 2] == [0, 0, 1])
        assert np.all((xyz[..., 2] > 0.2) & (xyz[..., 2] < 2.0))                    # metres, in front
        np.testing.assert_allclose(scale, np.linalg.norm(xyz[:, 9] - xyz[:, 10], axis=1))
        assert np.all((scale > 0.03) & (scale < 0.06))                             # middle MCP->PIP, m
    xyz = np.array(json.loads((src / "training_xyz.json").read_text()))
    k = np.array(json.loads((src / "training_K.json").read_text()))
    for a in range(N_SRC):
        uv = uv_of(xyz[a], k[a]) + 0.5                                              # pixel corners
        assert uv.min() > 5 and uv.max() < 219                                     # whole hand in view
        u, v = np.floor(uv).astype(int).T
        mask = np.asarray(Image.open(src / "training" / "mask" / f"{a:08d}.jpg").convert("L")) > 240
        assert mask[v, u].mean() >= 20 / 21 and 0.03 < mask.mean() < 0.6
        images = [np.asarray(Image.open(src / "training" / "rgb" / f"{ver * N_SRC + a:08d}.jpg"), float) for ver in range(4)]
        gs = images[0]
        assert (gs[v, u, 0] > gs[v, u, 1] + 10).mean() >= 0.9                     # skin at the joints
        bg = ~mask & (np.asarray(Image.open(src / "training" / "mask" / f"{a:08d}.jpg").convert("L")) < 15)
        assert np.median(gs[bg, 1] - gs[bg, 0]) > 60                               # green screen around it
        # the versions share one render: same hand (gs vs hom), different backdrops
        core = np.asarray(Image.fromarray(mask).filter(ImageFilter.MinFilter(5)), bool)
        assert np.abs(images[0] - images[1])[core].mean() < 3
        assert np.abs(images[0] - images[1])[bg].mean() > 10


def test_target_is_rhd_layout_with_exact_labels(demo):
    _, paths = demo
    tgt = paths.target
    sides_seen = set()
    for folder, n in (("training", N_TGT), ("evaluation", N_TGT_TEST)):
        for sub in ("color", "mask", "depth"):
            assert sorted(p.name for p in (tgt / folder / sub).iterdir()) == [f"{i:05d}.png" for i in range(n)]
        blob = (tgt / folder / f"anno_{folder}.pickle").read_bytes()
        assert b"numpy.core.multiarray" in blob                                   # as the Python 2 release
        anno = pickle.loads(blob)
        assert sorted(anno) == list(range(n))
        for i, e in anno.items():
            assert {k: (v.shape, v.dtype) for k, v in e.items()} == \
                {"xyz": ((42, 3), np.float32), "uv_vis": ((42, 3), np.float32), "K": ((3, 3), np.float32)}
            assert e["K"][0, 2] == 160 and e["K"][1, 2] == 160
            np.testing.assert_allclose(e["uv_vis"][:, :2], uv_of(e["xyz"], e["K"]), atol=1e-3)
            xyz = e["xyz"].astype(float) * 1000
            for off in (0, 21):
                hand = xyz[off:off + 21]
                # RHD order: wrist, then each finger tip -> MCP; the bone at the MCP is longer
                # than the one at the tip for every finger, and the palm is rigid
                for f in range(5):
                    tip, dip, pip, mcp = hand[1 + 4 * f:5 + 4 * f]
                    assert np.linalg.norm(mcp - pip) > np.linalg.norm(dip - tip)
                assert 60 < np.linalg.norm(hand[12] - hand[0]) < 140
            labels = np.asarray(Image.open(tgt / folder / "mask" / f"{i:05d}.png"))
            assert labels.ndim == 2 and labels.max() <= 33
            px = {"left": int(((labels >= 2) & (labels <= 17)).sum()), "right": int((labels >= 18).sum())}
            main = max(px, key=px.get)
            sides_seen.add(main)
            assert px[main] > 400 and (labels == 1).any()                         # a hand and an arm
            depth = np.asarray(Image.open(tgt / folder / "depth" / f"{i:05d}.png")).astype(float)
            metres = (depth[..., 0] * 256 + depth[..., 1]) / 65535 * 5
            vis = e["uv_vis"][:, 2] > 0.5
            off = 0 if main == "left" else 21
            assert vis[off:off + 21].sum() >= 8
            u, v = np.floor(e["uv_vis"][vis, :2]).astype(int).T
            # the surface seen at a visible joint lies in front of it by less than the wrist's radius
            gap_mm = xyz[vis, 2] - metres[v, u] * 1000
            assert np.all((gap_mm > -1) & (gap_mm < 50)), gap_mm
            side_of = np.where(np.arange(42)[vis] < 21, 0, 16)
            on_own_hand = (labels[v, u] >= 2 + side_of) & (labels[v, u] <= 17 + side_of)
            assert on_own_hand.mean() > 0.8
    assert sides_seen == {"left", "right"}


def test_backgrounds_are_imagenet_layout_photographs(demo):
    _, paths = demo
    files = sorted(paths.backgrounds.iterdir())
    assert [p.name for p in files] == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, N_BG + 1)]
    sizes = set()
    for p in files:
        with Image.open(p) as im:
            im.load()
            assert im.format == "JPEG" and 200 <= min(im.size) <= 401
            sizes.add(im.size)
            assert np.asarray(im.convert("L"), float).std() > 10                   # a picture, not a fill
    assert len(sizes) == N_BG


def test_domain_gap_is_measurable(demo):
    """Source hands are lighter, backdrops plainer; target backdrops are cluttered."""
    _, paths = demo

    def hand_and_edges(image, fg):
        grey = image.mean(-1)
        lap = np.abs(4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:])
        return image[fg].mean(), lap[~fg[1:-1, 1:-1]].mean()

    src_skin, src_edges, tgt_skin, tgt_edges = [], [], [], []
    for a in range(N_SRC):
        mask = np.asarray(Image.open(paths.source / "training" / "mask" / f"{a:08d}.jpg").convert("L")) > 128
        for ver in range(4):
            s, e = hand_and_edges(np.asarray(Image.open(paths.source / "training" / "rgb" / f"{ver * N_SRC + a:08d}.jpg"), float), mask)
            src_skin.append(s), src_edges.append(e)
    for i in range(N_TGT):
        labels = np.asarray(Image.open(paths.target / "training" / "mask" / f"{i:05d}.png"))
        s, e = hand_and_edges(np.asarray(Image.open(paths.target / "training" / "color" / f"{i:05d}.png"), float), labels >= 2)
        tgt_skin.append(s), tgt_edges.append(e)
    assert np.mean(src_skin) > np.mean(tgt_skin) + 30
    assert np.mean(tgt_edges) > 3 * np.mean(src_edges)


def test_converters_read_the_demo_trees(demo, tmp_path):
    root, paths = demo
    out = tmp_path / "shards"
    res = run("freihand", paths.source, out / "freihand", "--crop-size", 96)
    assert res.exit_code == 0, res.output
    xyz = np.array(json.loads((paths.source / "training_xyz.json").read_text()))
    train = list(iter_samples(out / "freihand" / "train"))
    assert len(train) == 4 * N_SRC and len(list(iter_samples(out / "freihand" / "test"))) == N_SRC_TEST
    assert sorted(s.meta["version"] for s in train) == sorted(["gs", "hom", "sample", "auto"] * N_SRC)
    for s in train:
        np.testing.assert_allclose(s.joints3d_mm, xyz[s.meta["annotation_id"]] * 1000, atol=1e-3)
        u, v = np.clip(np.floor(s.joints2d_px).astype(int), 0, 95).T
        assert (s.mask[v, u] == 255).mean() >= 20 / 21 and s.mask.mean() > 20

    res = run("rhd", root, out / "rhd", "--crop-size", 96)          # the folder holding RHD_published_v2
    assert res.exit_code == 0, res.output
    anno = pickle.loads((paths.target / "training" / "anno_training.pickle").read_bytes())
    samples = list(iter_samples(out / "rhd" / "train"))
    assert len(samples) == N_TGT and {s.meta["side"] for s in samples} == {"left", "right"}
    for s in samples:
        e = anno[s.meta["sample_id"]]
        off = 0 if s.meta["side"] == "left" else 21
        raw = e["xyz"][off:off + 21].astype(float) * 1000
        sign = np.array([-1.0 if s.meta["side"] == "left" else 1.0, 1, 1])
        np.testing.assert_allclose(s.joints3d_mm[[0, 4, 1, 8, 5]], raw[[0, 1, 4, 5, 8]] * sign, atol=1e-2)
        assert s.meta["uv_vis_error_px"] < 1e-2
        np.testing.assert_allclose(project(s.joints3d_mm.astype(float), s.intrinsics), s.joints2d_px, atol=1e-3)
        u, v = np.clip(np.floor(s.joints2d_px[s.visible]).astype(int), 0, 95).T
        assert (s.mask[v, u] == 255).mean() > 0.75
    res = run("imagenet", paths.backgrounds, out / "imagenet", "--crop-size", 64)
    assert res.exit_code == 0, res.output
    assert read_manifest(out / "imagenet" / "train")["samples"] == N_BG


def tree_digest(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_cli_is_deterministic_and_sized(tmp_path):
    args = ["--source-size", 2, "--source-test", 1, "--target-train", 2, "--target-test", 1, "--backgrounds", 2,
            "--image-size", 96, 128]
    res = run("demo", tmp_path / "a", *args, "--seed", 7, "--workers", 1)
    assert res.exit_code == 0, res.output
    res = run("demo", tmp_path / "b", *args, "--seed", 7, "--workers", 2)
    assert res.exit_code == 0, res.output
    a, b = tree_digest(tmp_path / "a"), tree_digest(tmp_path / "b")
    assert len(a) == (8 + 2 + 1 + 1 + 6) + (3 * 3 + 2) + 2 + 1 and a == b      # every file, bit for bit
    res = run("demo", tmp_path / "c", *args, "--seed", 8)
    assert res.exit_code == 0, res.output
    c = tree_digest(tmp_path / "c")
    assert c.keys() == a.keys() and c["FreiHAND_pub_v2/training/rgb/00000000.jpg"] != a["FreiHAND_pub_v2/training/rgb/00000000.jpg"]
    assert Image.open(tmp_path / "a" / "FreiHAND_pub_v2" / "training" / "rgb" / "00000003.jpg").size == (96, 96)
    assert Image.open(tmp_path / "a" / "RHD_published_v2" / "evaluation" / "color" / "00000.png").size == (128, 128)
    k = json.loads((tmp_path / "a" / "FreiHAND_pub_v2" / "training_K.json").read_text())
    assert k[0][0][2] == 47.5 and k[0][1][2] == 47.5                       # pixel-centre convention
    assert json.loads((tmp_path / "a" / "demo.json").read_text())["seed"] == 7

    res = run("demo", tmp_path / "d", "--source-size", 0)
    assert res.exit_code != 0 and "source_size must be at least 1" in res.output
