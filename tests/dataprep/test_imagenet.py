"""`dataprep imagenet` on ILSVRC2012-validation-layout fixtures (flat and per-WNID folders,
RGB, greyscale and CMYK JPEGs)."""
import json

import numpy as np
from click.testing import CliRunner
from PIL import Image

from dataprep.cli import cli
from shards.reader import iter_samples, read_manifest
from tests.dataprep.skips import read_skips

RED, BLUE, CMYK_RGB = (220, 30, 30), (30, 40, 210), (40, 160, 90)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def write_val_folder(root, wnid_layout=False):
    """Four validation images with known content: name -> (original W, H, mode)."""
    root.mkdir(parents=True)
    half = np.zeros((60, 120, 3), np.uint8)      # landscape: left half red, right half blue
    half[:, :60], half[:, 60:] = RED, BLUE
    grey = np.tile(np.linspace(0, 255, 50, dtype=np.uint8)[None, :], (100, 1))   # portrait L ramp
    cmyk = Image.fromarray(np.full((64, 64, 3), CMYK_RGB, np.uint8)).convert("CMYK")
    solid = np.full((30, 45, 3), (90, 200, 120), np.uint8)   # smaller than the stored size: upscaled
    images = {
        "ILSVRC2012_val_00000001.JPEG": Image.fromarray(half),
        "ILSVRC2012_val_00000002.JPEG": Image.fromarray(grey, "L"),
        "ILSVRC2012_val_00000003.JPEG": cmyk,
        "ILSVRC2012_val_00000004.JPEG": Image.fromarray(solid),
    }
    wnids = ["n01440764", "n01440764", "n01443537", "n15075141"]
    for (name, im), wnid in zip(images.items(), wnids):
        folder = root / wnid if wnid_layout else root
        folder.mkdir(exist_ok=True)
        im.save(folder / name, format="JPEG", quality=95)
    return {n: (im.size, im.mode) for n, im in images.items()}


def by_source(path):
    return {s.meta["source"].split("/")[-1]: s for s in iter_samples(path)}


def test_flat_layout_full_images_shorter_side(tmp_path):
    originals = write_val_folder(tmp_path / "val")
    out = tmp_path / "out"
    r = run("imagenet", tmp_path / "val", out, "--crop-size", 32)
    assert r.exit_code == 0, r.output
    samples = by_source(out / "train")
    assert len(samples) == 4
    for name, ((w, h), mode) in originals.items():
        s = samples[name]
        scale = 32 / min(w, h)
        assert s.image.shape == (max(32, round(h * scale)), max(32, round(w * scale)), 3)
        assert s.joints2d_px is None and s.joints3d_mm is None and s.intrinsics is None and s.mask is None
        assert s.meta["joint_order"] == "none" and s.meta["split"] == "train"
        assert s.meta["original_size"] == [w, h] and s.meta["original_mode"] == mode
    assert samples["ILSVRC2012_val_00000001.JPEG"].image.shape == (32, 64, 3)
    assert samples["ILSVRC2012_val_00000002.JPEG"].image.shape == (64, 32, 3)
    # orientation kept: red left, blue right
    img = samples["ILSVRC2012_val_00000001.JPEG"].image.astype(int)
    assert np.abs(img[16, 8] - RED).max() < 12 and np.abs(img[16, 56] - BLUE).max() < 12
    # greyscale -> three equal channels, ramp still increasing left to right
    g = samples["ILSVRC2012_val_00000002.JPEG"].image.astype(int)
    assert np.abs(g[..., 0] - g[..., 1]).max() <= 1 and np.abs(g[..., 0] - g[..., 2]).max() <= 1
    assert g[32, 28, 0] - g[32, 3, 0] > 150
    # CMYK (Adobe-inverted JPEG as PIL writes it) decodes back to the RGB colour it was made from
    c = samples["ILSVRC2012_val_00000003.JPEG"].image.astype(int)
    assert c.shape == (32, 32, 3) and np.abs(c[16, 16] - CMYK_RGB).max() < 12
    m = read_manifest(out / "train")
    assert m["samples"] == 4 and m["joint_order"] == "none" and m["layout"] == "flat"
    assert m["shorter_side"] == 32 and m["center_crop"] is False and m["skipped"]["count"] == 0
    r = run("verify", out)
    assert r.exit_code == 0 and "OK, 4 samples" in r.output


def test_wnid_layout_center_crop(tmp_path):
    write_val_folder(tmp_path / "val", wnid_layout=True)
    out = tmp_path / "out"
    r = run("imagenet", tmp_path / "val", out, "--crop-size", 40, "--center-crop", "--workers", 2)
    assert r.exit_code == 0, r.output
    samples = by_source(out / "train")
    assert sorted(samples) == [f"ILSVRC2012_val_0000000{i}.JPEG" for i in range(1, 5)]
    assert all(s.image.shape == (40, 40, 3) for s in samples.values())
    assert samples["ILSVRC2012_val_00000003.JPEG"].meta["wnid"] == "n01443537"
    assert samples["ILSVRC2012_val_00000001.JPEG"].meta["source"] == "n01440764/ILSVRC2012_val_00000001.JPEG"
    # the centred square of the red|blue image straddles the boundary in the middle
    img = samples["ILSVRC2012_val_00000001.JPEG"].image.astype(int)
    assert np.abs(img[20, 4] - RED).max() < 12 and np.abs(img[20, 35] - BLUE).max() < 12
    assert read_manifest(out / "train")["layout"] == "wnid"
    assert run("verify", out).exit_code == 0


def test_corrupt_image_error_and_skip_bad(tmp_path):
    write_val_folder(tmp_path / "val")
    bad = tmp_path / "val" / "ILSVRC2012_val_00000005.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    r = CliRunner().invoke(cli, ["imagenet", str(tmp_path / "val"), str(tmp_path / "out")])
    assert r.exit_code == 1
    assert "corrupt or unreadable image" in r.output and str(bad) in r.output
    assert "imagenet_ILSVRC2012_val_00000005" in r.output
    r = run("imagenet", tmp_path / "val", tmp_path / "out2", "--crop-size", 32, "--skip-bad")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "out2" / "train" / "manifest.json").read_text())
    assert m["samples"] == 4
    skips = read_skips(tmp_path / "out2" / "train")
    assert [s["key"] for s in skips] == ["imagenet_ILSVRC2012_val_00000005"], skips
    assert "corrupt or unreadable image" in skips[0]["reason"] and skips[0]["file"] == str(bad)
    r = CliRunner().invoke(cli, ["imagenet", str(tmp_path / "val"), str(tmp_path / "out3"), "--context", "2"])
    assert r.exit_code == 2 and "not cropped around joints" in r.output
