"""DALI input pipelines (CPU mode), checked numerically on tiny synthetic shards."""
import json

import numpy as np
import pytest
import torch

from shards.pipelines import eval_loader, finetune_loader, pretrain_loader, segnet_loader, target_loader
from shards.pipelines.augment import IMAGENET_MEAN, IMAGENET_STD
from shards.reader import iter_samples
from shards.schema import SampleError, encode_sample
from shards.writer import ShardWriter
from tests.shards.synthetic import (background_sample, flat_image, gaussian_dot, hand_sample, jpeg_roundtrip,
                                    smooth_image, soft_mask, write_shards)

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def pixels(image: torch.Tensor) -> torch.Tensor:
    """Normalised (B,3,H,W) -> 0..255 pixel values (float, unclamped)."""
    return (image * STD + MEAN) * 255.0


def take(loader, n: int) -> list[dict]:
    """n batches, running on through epoch boundaries."""
    out = []
    while len(out) < n:
        for batch in loader:
            out.append(batch)
            if len(out) == n:
                break
    return out


def by_key(batches, name):
    return {k: batch[name][i] for batch in batches for i, k in enumerate(batch["key"])}


def stored(path) -> dict:
    return {s.key: s for s in iter_samples(path)}


# -- pre-training: compositing ----------------------------------------------------------------
BACKGROUND_COLOURS = [(200, 30, 40), (20, 160, 90), (60, 70, 220)]


@pytest.fixture(scope="module")
def composite_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("composite")
    size = 64
    source = [hand_sample(f"s{i}", i, size, image=smooth_image(size, i), mask=soft_mask(size) if i < 3 else None)
              for i in range(4)]
    backgrounds = [background_sample(f"bg{i}", flat_image((size, size + 16), c)) for i, c in enumerate(BACKGROUND_COLOURS)]
    return write_shards(root / "src", source, per_shard=2), write_shards(root / "bg", backgrounds, per_shard=2)


def test_composite_is_mask_blend_of_foreground_and_background(composite_data):
    src, bgs = composite_data
    kw = dict(batch_size=4, input_size=64, seed=0, augment=False)
    swapped = take(pretrain_loader(src, None, bgs, p_bg=1.0, **kw), 1)[0]
    plain = take(pretrain_loader(src, None, bgs, p_bg=0.0, **kw), 1)[0]
    assert swapped["key"] == plain["key"]                       # the reader order does not depend on p_bg
    x, out = pixels(plain["image"]), pixels(swapped["image"])
    originals = stored(src)                                      # as PIL decodes the stored JPEGs
    decoded_bg = [jpeg_roundtrip(flat_image((64, 80), c))[0, 0].astype(np.float32) for c in BACKGROUND_COLOURS]
    for i, key in enumerate(swapped["key"]):
        sample = originals[key]
        # no augmentation, stored size = input size: the warp is the identity, pixel for pixel
        assert np.abs(x[i].permute(1, 2, 0).numpy() - sample.image).max() <= 3.0
        if sample.mask is None:
            assert not swapped["has_mask"][i]
            assert torch.count_nonzero(swapped["mask"][i]) == 0
            assert torch.allclose(out[i], x[i], atol=1e-3)          # no mask: never swapped
            continue
        assert swapped["has_mask"][i]
        m = torch.from_numpy(sample.mask.astype(np.float32) / 255.0)[None]
        assert torch.allclose(swapped["mask"][i], m, atol=1e-6)
        u = out[i][:, :, 0]                                      # the mask is 0 in column 0: pure background
        assert any(np.abs(u.mean(1).numpy() - c).max() <= 1.5 for c in decoded_bg)
        u = u.mean(1)[:, None, None]
        expected = m * x[i] + (1 - m) * u
        assert (out[i] - expected).abs().max() < 0.51           # the CPU graph rounds the blend to uint8
        assert (out[i] - x[i]).abs().max() > 50                 # and the swap did change the image


def test_samples_without_mask_are_never_swapped_and_masks_follow_the_warp(composite_data):
    src, bgs = composite_data
    batches = take(pretrain_loader(src, None, bgs, batch_size=2, input_size=48, p_bg=1.0, seed=5), 4)
    for batch in batches:
        assert batch["image"].shape == (2, 3, 48, 48) and batch["mask"].shape == (2, 1, 48, 48)
        assert batch["is_target"].dtype == torch.bool and not batch["is_target"].any()
        for i, key in enumerate(batch["key"]):
            if key == "s3":
                assert not batch["has_mask"][i] and torch.count_nonzero(batch["mask"][i]) == 0
            else:   # the x-ramp mask, rotated/zoomed: still in [0, 1] and non-trivial
                assert batch["has_mask"][i] and 0.2 < batch["mask"][i].mean() < 0.8
                assert batch["mask"][i].min() >= 0 and batch["mask"][i].max() <= 1


# -- fine-tuning: joints move with their pixels ------------------------------------------------
@pytest.fixture(scope="module")
def dot_hands(tmp_path_factory):
    """Hands whose only bright pixel is a Gaussian dot drawn on joint 9; stored at 80 px."""
    samples = []
    for i in range(6):
        s = hand_sample(f"h{i}", i, 80)
        s.image = gaussian_dot(80, s.joints2d_px[9])
        samples.append(s)
    return write_shards(tmp_path_factory.mktemp("dots"), samples, per_shard=4)


def dot_centre(image_px: torch.Tensor) -> np.ndarray:
    """Intensity-weighted centroid of the dot (continuous coordinates), robust to the colour
    jitter's gain and offset: the flat surround is subtracted."""
    v = image_px.mean(0).numpy()
    v = v - np.median(v)
    w = np.where(v > 0.3 * v.max(), v, 0.0)
    yy, xx = np.mgrid[0:v.shape[0], 0:v.shape[1]] + 0.5
    return np.array([(w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()])


def test_cpu_opencv_warp_equals_dali_warp_affine():
    """The CPU graph warps with OpenCV, the GPU graph with DALI's warp_affine: same matrix
    convention (pixel corners at integers), same zero border, within OpenCV's 1/32-pixel and
    15-bit-weight rounding. A half-pixel convention slip would differ by tens of grey levels on
    this high-frequency image."""
    from nvidia.dali import fn, pipeline_def, types
    from shards.pipelines.opencv import opencv_warp
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 50, 4), dtype=np.uint8), rng.integers(0, 256, (40, 50, 1), dtype=np.uint8)]
    angle = np.deg2rad(25.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) * 0.8
    matrix = np.hstack([rotation, [[6.0], [-9.5]]]).astype(np.float32)       # source -> destination

    @pipeline_def(batch_size=2, num_threads=1, device_id=None)
    def dali_warp():
        x = fn.external_source(source=lambda: images, batch=True, layout="HWC")
        return fn.warp_affine(x, matrix=matrix.ravel().tolist(), size=[48, 48], inverse_map=False, fill_value=0,
                              interp_type=types.INTERP_LINEAR)
    pipe = dali_warp()
    pipe.build()
    (expected,) = pipe.run()
    ours = opencv_warp(images, [matrix, matrix], size=48)
    for i, image in enumerate(images):
        want = np.asarray(expected[i]).astype(int)
        assert ours[i].shape == want.shape == (48, 48, image.shape[2])
        assert np.abs(ours[i].astype(int) - want).max() <= 3
        outside = (want == 0).all(axis=2)                                   # the zero border around the rotated crop
        assert 0.1 < outside.mean() < 0.7 and np.abs((ours[i] == 0).all(axis=2).mean() - outside.mean()) < 0.01


def test_affine_moves_joints_exactly_as_pixels(dot_hands):
    loader = finetune_loader(dot_hands, batch_size=3, input_size=64, seed=2, rank=0, world_size=1)
    originals = stored(dot_hands)
    batches = take(loader, 6)                    # three epochs: every hand under several augmentations
    moved = 0
    for batch in batches:
        assert batch["image"].shape == (3, 3, 64, 64) and batch["joints2d"].shape == (3, 21, 2)
        for i, key in enumerate(batch["key"]):
            joint = batch["joints2d"][i, 9].numpy()
            assert np.abs(dot_centre(pixels(batch["image"][i:i + 1])[0]) - joint).max() < 0.3
            plain = originals[key].joints2d_px[9] * 64 / 80
            moved += np.abs(joint - plain).max() > 2.0
            s = originals[key]
            np.testing.assert_allclose(batch["depth_rel_mm"][i].numpy(),
                                       s.joints3d_mm[:, 2] - s.joints3d_mm[0, 2], atol=1e-4)
            np.testing.assert_array_equal(batch["visible"][i].numpy(), s.visible.astype(np.float32))
            assert batch["has_depth"][i]
    assert moved >= 12                           # the augmentation really rotates/zooms/shifts


def test_target_loader_gives_label_free_images(dot_hands):
    batch = take(target_loader(dot_hands, batch_size=4, input_size=32, seed=0, rank=0, world_size=1), 1)[0]
    assert set(batch) == {"image", "key"} and batch["image"].shape == (4, 3, 32, 32)
    assert len(set(batch["key"])) == 4


def test_ranks_read_disjoint_parts_covering_the_source_every_epoch(tmp_path):
    path = write_shards(tmp_path / "ranks", [hand_sample(f"k{i:02d}", i, 32) for i in range(12)], per_shard=5)
    loaders = [finetune_loader(path, batch_size=2, input_size=32, seed=1, rank=r, world_size=2) for r in (0, 1)]
    assert [len(loader) for loader in loaders] == [3, 3]
    for _ in range(3):                           # the shard order is reshuffled every epoch
        keys = [[k for batch in loader for k in batch["key"]] for loader in loaders]
        assert sorted(keys[0] + keys[1]) == [f"k{i:02d}" for i in range(12)]


# -- evaluation: every sample exactly once ---------------------------------------------------
def test_eval_reads_every_sample_once_across_two_ranks(tmp_path):
    samples = [hand_sample(f"e{i}", i, 64, with_3d=(i != 5)) for i in range(7)]
    path = write_shards(tmp_path / "eval", samples, per_shard=3)
    originals = {s.key: s for s in samples}
    seen = []
    for rank in (0, 1):
        loader = eval_loader(path, batch_size=2, input_size=32, rank=rank, world_size=2)
        assert len(loader) == 2                                  # ranks hold 3 and 4 samples
        epochs = [take_epoch(loader) for _ in range(2)]
        assert [b["key"] for b in epochs[0]] == [b["key"] for b in epochs[1]]   # epochs stay aligned
        for batch in epochs[0]:
            for i, key in enumerate(batch["key"]):
                if not batch["valid"][i]:
                    continue
                seen.append(key)
                s = originals[key]
                np.testing.assert_array_equal(batch["joints2d_px"][i].numpy(), s.joints2d_px)
                np.testing.assert_array_equal(batch["visible"][i].numpy(), s.visible.astype(np.float32))
                np.testing.assert_allclose(batch["crop_to_input"][i].numpy(), [[0.5, 0, 0], [0, 0.5, 0]], atol=1e-7)
                if s.joints3d_mm is None:
                    assert not batch["has_3d"][i] and torch.count_nonzero(batch["joints3d_mm"][i]) == 0
                else:
                    assert batch["has_3d"][i]
                    np.testing.assert_array_equal(batch["joints3d_mm"][i].numpy(), s.joints3d_mm)
                    np.testing.assert_array_equal(batch["intrinsics"][i].numpy(), s.intrinsics)
    assert sorted(seen) == sorted(originals)                     # each of the 7 exactly once


def take_epoch(loader):
    return list(loader)


# -- determinism and resume --------------------------------------------------------------------
@pytest.fixture(scope="module")
def mixed_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(0)
    src = [hand_sample(f"src{i}", i, 48, mask=(rng.random((48, 48)) > 0.5).astype(np.uint8) * 255 if i % 4 else None)
           for i in range(12)]
    tgt = [hand_sample(f"tgt{i}", i, 48, mask=soft_mask(48)) for i in range(6)]
    bgs = [background_sample(f"bg{i}", smooth_image(56, 100 + i)) for i in range(5)]
    return (write_shards(root / "src", src, per_shard=5), write_shards(root / "tgt", tgt, per_shard=4),
            write_shards(root / "bg", bgs, per_shard=3))


def pretrain(data, seed, batch_size=3):
    return pretrain_loader(*data, batch_size=batch_size, input_size=32, p_bg=0.5, seed=seed)


def assert_same_batches(a, b):
    for x, y in zip(a, b, strict=True):
        assert x["key"] == y["key"]
        for name in ("image", "mask", "has_mask", "is_target"):
            assert torch.equal(x[name], y[name]), name


def test_same_seed_gives_the_same_stream(mixed_data):
    loader = pretrain(mixed_data, seed=3)
    assert len(loader) == 6                                      # 12 source / 2 per batch (+1 target)
    first = take(loader, 8)
    assert_same_batches(first, take(pretrain(mixed_data, seed=3), 8))
    other = take(pretrain(mixed_data, seed=4), 8)
    assert [b["key"] for b in other] != [b["key"] for b in first]
    for batch in first:
        assert batch["is_target"].tolist() == [False, False, True]
    epoch = [k for b in first[:6] for k in b["key"][:2]]
    assert sorted(epoch) == sorted(f"src{i}" for i in range(12))   # an epoch covers the source once


def test_resume_from_state_dict_continues_the_same_order(mixed_data):
    loader = pretrain(mixed_data, seed=7)
    it = _forever(loader)
    for _ in range(4):
        next(it)
    state = json.loads(json.dumps(loader.state_dict()))          # what DeepSpeed's client_state holds
    assert (state["global_step"], state["micro"]) == (4, 0)    # the data position is the global step
    expected = [next(it) for _ in range(5)]                     # crosses the epoch boundary at 6
    resumed = pretrain(mixed_data, seed=7)
    resumed.load_state_dict(state)
    got = take(resumed, 5)
    assert_same_batches(got, expected)
    assert (resumed.epoch, resumed.step) == (1, 3)
    with pytest.raises(ValueError, match="saved with"):
        pretrain(mixed_data, seed=7, batch_size=4).load_state_dict(state)


def _forever(loader):
    while True:
        yield from loader


# -- segmentation input and bad input ----------------------------------------------------------
def test_cpu_graph_with_opencv_matches_the_dali_operator_graph(mixed_data, monkeypatch):
    """POSEMAE_CPU_IMAGE_OPS=dali runs the operators GPU machines use (DALI warp_affine, float
    blend after normalising) on the CPU; the default CPU graph (OpenCV warp, uint8 blend before
    normalising) must give the same batches up to rounding: same samples, same swaps, same
    augmentation."""
    def batches(ops, p_bg=0.5):
        monkeypatch.setenv("POSEMAE_CPU_IMAGE_OPS", ops)
        return take(pretrain_loader(*mixed_data, batch_size=3, input_size=32, p_bg=p_bg, seed=3), 6)
    swapped = 0
    for ours, dali, unswapped in zip(batches("opencv"), batches("dali"), batches("opencv", p_bg=0.0)):
        assert ours["key"] == dali["key"] == unswapped["key"]
        assert torch.equal(ours["has_mask"], dali["has_mask"]) and torch.equal(ours["is_target"], dali["is_target"])
        difference = (pixels(ours["image"]) - pixels(dali["image"])).abs()
        # 3 grey levels of warp rounding, half a level of blend rounding, times the jitter's gain (<= 2.2)
        assert difference.max() < 8 and difference.mean() < 0.5
        assert (ours["mask"] - dali["mask"]).abs().max() <= 3 / 255 + 1e-6
        swapped += int(((ours["image"] - unswapped["image"]).abs().amax(dim=(1, 2, 3)) > 0.1).sum())
    assert 3 <= swapped <= 15                    # the comparison covers composited samples too


def test_cpu_image_ops_setting_is_checked(mixed_data, monkeypatch):
    monkeypatch.setenv("POSEMAE_CPU_IMAGE_OPS", "pil")
    with pytest.raises(ValueError, match="POSEMAE_CPU_IMAGE_OPS must be one of opencv, dali, got 'pil'"):
        take(pretrain(mixed_data, seed=0), 1)


def test_segnet_loader_reads_only_samples_with_masks(mixed_data):
    src = mixed_data[0]
    loader = segnet_loader(src, batch_size=3, input_size=32, seed=0, rank=0, world_size=1)
    assert len(loader) == 3                                      # 9 of the 12 have a mask
    keys = [k for b in loader for k in b["key"]]
    assert sorted(keys) == sorted(f"src{i}" for i in range(12) if i % 4)
    assert all(b["has_mask"].all() for b in take(loader, 3))


def test_corrupt_image_raises_sample_error_naming_file_and_sample(tmp_path):
    out = tmp_path / "bad"
    with ShardWriter(out, max_count=4, command=["tests"]) as writer:
        for i in range(4):
            members = encode_sample(hand_sample(f"k{i}", i, 32))
            if i == 2:
                members["jpg"] = b"\xff\xd8 not a jpeg " * 8
            writer.write(f"k{i}", members, i + 1)
    with pytest.raises(SampleError, match=r"undecodable member.*\(file \S*bad/shard-000000\.tar, sample k2\)"):
        take(target_loader(out, batch_size=4, input_size=32, seed=0, rank=0, world_size=1), 1)
