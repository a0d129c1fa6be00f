"""The global sample order (shards.order) and the DALI external source that reads in it
(shards.ordered_source), on real shards written by the real writer and a real DALI CPU pipeline
with spawned reader workers."""
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from nvidia.dali import fn, pipeline_def, types

from shards.order import BatchPlan, Catalog, GlobalOrder, eval_rows, sample_draws
from shards.ordered_source import (AUGMENT_DRAWS, RankSource, augment_parameters, crop_to_input_from, key_strings,
                                   ordered_reader, worker_kwargs)
from shards.pipelines.augment import IMAGENET_MEAN, IMAGENET_STD, Augment
from shards.pipelines.steps import image_size
from shards.schema import SampleError
from tests.shards.synthetic import blob_mask, hand_sample, write_shards

N = 30   # samples: 3 global batches of 8 per epoch, 6 left out of each epoch


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    rng = np.random.default_rng(0)
    samples = [hand_sample(f"s{i:03d}", i, 40, mask=blob_mask(40, rng) if i % 3 else None) for i in range(N)]
    return write_shards(tmp_path_factory.mktemp("order") / "set", samples, per_shard=7)


# -- the order --------------------------------------------------------------------------------------
def test_each_epoch_is_a_permutation_of_seed_and_epoch_alone():
    order = GlobalOrder(N, seed=3, salt="source")
    epochs = [order.permutation(e) for e in range(3)]
    assert all(sorted(p) == list(range(N)) for p in epochs)
    assert not np.array_equal(epochs[0], epochs[1])
    # a fresh object (another process, another rank) draws the same permutations
    assert np.array_equal(GlobalOrder(N, seed=3, salt="source").permutation(1), epochs[1])
    assert not np.array_equal(GlobalOrder(N, seed=4, salt="source").permutation(1), epochs[1])
    assert not np.array_equal(GlobalOrder(N, seed=3, salt="target").permutation(1), epochs[1])
    assert np.array_equal(order.sample_at(np.arange(N, 2 * N)), epochs[1])


@pytest.mark.parametrize("world_size,micro_batch", [(1, 8), (1, 2), (2, 4), (2, 1), (4, 2), (8, 1)])
def test_global_batches_do_not_depend_on_the_world_size(world_size, micro_batch):
    """Global batch s holds the same samples however many ranks, micro-batches and accumulation
    steps compute it; each rank and micro-batch gets distinct ones."""
    order = GlobalOrder(N, seed=0, salt="source")
    reference = BatchPlan(8, 1, 8)
    plan = BatchPlan(8, world_size, micro_batch)
    assert plan.accumulation == 8 // (world_size * micro_batch) and plan.steps_per_epoch(N) == 3
    for step in range(7):      # across epoch boundaries
        parts = [plan.sample_indices(order, step, m, r) for r in range(world_size) for m in range(plan.accumulation)]
        dealt = np.concatenate(parts)
        assert len(set(dealt)) == 8
        assert sorted(dealt) == sorted(reference.sample_indices(order, step, 0, 0))
        assert sorted(dealt) == sorted(order.sample_at(plan.global_positions(N, step)))
    # an epoch's steps read distinct samples, its left-out tail the others
    first_epoch = np.concatenate([order.sample_at(plan.global_positions(N, s)) for s in range(3)])
    assert len(set(first_epoch)) == 24


def test_batch_plan_refuses_a_global_batch_the_ranks_cannot_share():
    with pytest.raises(ValueError, match="not a multiple of 3 ranks x micro-batch 4"):
        BatchPlan(16, 3, 4)
    with pytest.raises(ValueError, match="make no global batch"):
        BatchPlan(64, 2, 4).steps_per_epoch(N)


@pytest.mark.parametrize("size", [1, 7, 50])
@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
@pytest.mark.parametrize("batch", [1, 4])
def test_evaluation_counts_every_sample_once(size, world_size, batch):
    per_rank = [eval_rows(size, world_size, r, batch) for r in range(world_size)]
    assert len({len(b) for b in per_rank}) == 1          # the same number of batches on every rank
    valid = [int(row) for batches in per_rank for rows, ok in batches for row, v in zip(rows, ok) if v]
    assert sorted(valid) == list(range(size))
    assert all(len(rows) == batch for batches in per_rank for rows, _ in batches)


# -- the catalog ------------------------------------------------------------------------------------
def test_catalog_offsets_are_the_tar_members(shards):
    catalog = Catalog.of(shards, ["jpg", "mask.png", "json"])
    assert len(catalog) == N and list(catalog.keys) == [f"s{i:03d}" for i in range(N)]
    source = RankSource(catalog, GlobalOrder(N), BatchPlan(8, 1, 8), rank=0)
    for row in (0, 1, 8, N - 1):
        shard = catalog.shards[catalog.shard_of[row]]
        with tarfile.open(shard) as tf:
            for e, ext in enumerate(catalog.exts):
                name = f"{catalog.keys[row]}.{ext}"
                if name not in tf.getnames():
                    assert catalog.sizes[row, e] == -1 and len(source.read(row, e)) == 0
                else:
                    assert source.read(row, e).tobytes() == tf.extractfile(name).read()
    assert (catalog.sizes[:, 1] == -1).sum() == len(range(0, N, 3))   # the samples without a mask


def test_a_bad_index_or_a_truncated_tar_is_named(shards, tmp_path):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    idx = copy / "shard-000001.idx"
    lines = idx.read_text().splitlines()
    idx.write_text("\n".join(lines[:-1]) + "\n")             # one sample line lost
    with pytest.raises(SampleError, match=f"index lists 6 samples, its header 7.*file {idx}"):
        Catalog.of(copy, ["jpg"])
    idx.write_text("\n".join(lines) + "\n")

    tar = copy / "shard-000002.tar"
    catalog = Catalog.of(copy, ["jpg", "mask.png"])
    rows = np.flatnonzero(catalog.shard_of == 2)
    cut = int(catalog.offsets[rows[-2], 0]) + 10              # inside the second-last sample's jpg
    with open(tar, "r+b") as f:
        f.truncate(cut)
    with pytest.raises(SampleError, match=f"truncated shard.*file {tar}, sample {catalog.keys[rows[-2]]}"):
        catalog.check_sizes()
    source = RankSource(catalog, GlobalOrder(N), BatchPlan(8, 1, 8), rank=0)
    with pytest.raises(SampleError, match=f"truncated shard: member jpg has 10 of.*sample {catalog.keys[rows[-2]]}"):
        source.read(int(rows[-2]), 0)


def test_sample_draws_are_a_stable_function_of_seed_salt_and_position():
    """The augmentation of a resumed run is the original's only if the draws never change: pinned
    values (those of the first, per-position implementation), rows independent of which other
    positions share the call, U[0, 1) in float32."""
    assert sample_draws(0, "source", [0], 4)[0].tolist() == [0.5826772451400757, 0.834557294845581,
                                                             0.49464088678359985, 0.7029209136962891]
    assert sample_draws(0, "source", [123456789], 2)[0].tolist() == [0.07603007555007935, 0.5118311643600464]
    many = sample_draws(0, "source", np.arange(5000), 12)
    assert many.shape == (5000, 12) and many.dtype == np.float32
    assert np.array_equal(many[[7, 4999, 0]], sample_draws(0, "source", [7, 4999, 0], 12))
    assert not np.array_equal(many[:10], sample_draws(0, "target", np.arange(10), 12))
    assert not np.array_equal(many[:10], sample_draws(1, "source", np.arange(10), 12))
    assert many.min() >= 0 and many.max() < 1 and abs(many.mean() - 0.5) < 0.01


@pipeline_def
def augmentation_by_dali_operators(draws, sizes, augment, size):
    """The reference: shards.pipelines.augment's crop_to_input and colour_normalisation maths
    with given draws, as DALI operators compute it."""
    u, hw = fn.external_source(source=lambda: draws), fn.external_source(source=lambda: sizes)
    h, w, s = hw[0], hw[1], float(size)

    def between(x, lo, hi):
        return x * (hi - lo) + lo
    zoom, angle = between(u[0], *augment.scale), between(u[1], -augment.rotation_deg, augment.rotation_deg)
    shift = fn.stack(between(u[2], -augment.translate * s, augment.translate * s),
                     between(u[3], -augment.translate * s, augment.translate * s))
    mt = fn.transforms.translation(offset=fn.stack(-0.5 * w, -0.5 * h))
    mt = fn.transforms.scale(mt, scale=fn.stack(zoom * s / w, zoom * s / h))
    mt = fn.transforms.rotation(mt, angle=angle)
    mt = fn.transforms.translation(mt, offset=shift + 0.5 * s)
    brightness = between(u[4], 1 - augment.brightness, 1 + augment.brightness)
    contrast = between(u[5], 1 - augment.contrast, 1 + augment.contrast)
    gain = between(u[6:9], 1 - augment.colour_gain, 1 + augment.colour_gain)
    a, b = gain * (brightness * contrast), gain * (brightness * 128.0 * (1.0 - contrast))
    mean = (fn.constant(fdata=[255.0 * m for m in IMAGENET_MEAN], shape=[3]) - b) / a
    std = fn.constant(fdata=[255.0 * m for m in IMAGENET_STD], shape=[3]) / a
    return mt, mean, std


@pipeline_def
def matrices_from_parameters(affine, sizes):
    return crop_to_input_from(fn.external_source(source=lambda: sizes), fn.external_source(source=lambda: affine))


def test_augment_parameters_equal_the_dali_operator_maths():
    """The workers' numpy augmentation (affine, mean, std) composed in the pipeline equals the
    same maths done by DALI's transform and arithmetic operators (rotation direction, order of
    the steps, the colour fold), to float32 rounding."""
    augment, size, n = Augment(), 64, 16
    draws = sample_draws(3, "source", np.arange(n), AUGMENT_DRAWS)
    hw = np.random.default_rng(0).integers(40, 300, size=(n, 2)).astype(np.float32)
    kwargs = dict(batch_size=n, num_threads=1, device_id=None)
    reference = augmentation_by_dali_operators(list(draws), list(hw), augment, size, **kwargs)
    reference.build()
    matrix_ref, mean_ref, std_ref = (np.stack([np.asarray(t[i]) for i in range(n)]) for t in reference.run())
    affine, mean, std = augment_parameters(draws, augment, size)
    assert affine.shape == (n, 2, 3) and mean.shape == std.shape == (n, 3)
    ours = matrices_from_parameters(list(affine), list(hw), **kwargs)
    ours.build()
    matrix = np.stack([np.asarray(t) for t in ours.run()[0]])
    np.testing.assert_allclose(matrix, matrix_ref, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-5)
    np.testing.assert_allclose(std, std_ref, rtol=1e-5)
    # and the augmentation is not the identity: zoom, rotation and shift all vary
    assert np.ptp(np.linalg.det(matrix[:, :, :2] / size * hw[:, None, ::-1])) > 0.1 and np.ptp(matrix[:, 0, 2]) > 5


# -- DALI in the global order -----------------------------------------------------------------------
SIDE = 24


@pipeline_def
def augmenting_pipeline(source):
    """Decode, then the sample's own augmentation (RankSource's affine, mean, std) and a factor
    drawn from its extra draws."""
    jpg, png, key, u, affine, mean, std = ordered_reader(source)
    image = fn.decoders.image(jpg, output_type=types.RGB)
    image = fn.warp_affine(image, matrix=crop_to_input_from(image_size(jpg), affine), size=[SIDE, SIDE],
                           inverse_map=False)
    image = fn.crop_mirror_normalize(image, mean=mean, std=std, output_layout="HWC") * (0.5 + u[2])
    return image, key, png.shape()      # mask.png bytes: present or empty


def read_global_batches(shards, world_size, micro_batch, steps, start_step=0):
    """{step: {key: image}} over every rank of a world, and the per-rank micro-batch key lists."""
    catalog = Catalog.of(shards, ["jpg", "mask.png"])
    order = GlobalOrder(len(catalog), seed=5, salt="source")
    plan = BatchPlan(8, world_size, micro_batch)
    out, dealt = {}, []
    for rank in range(world_size):
        source = RankSource(catalog, order, plan, rank, start_step=start_step, draws=3, augment=Augment(),
                            input_size=SIDE)
        assert source.names == ("jpg", "mask.png", "key", "draws", "affine", "mean", "std")
        pipe = augmenting_pipeline(source, batch_size=micro_batch, num_threads=1, device_id=None,
                                   seed=rank, **worker_kwargs(2))
        pipe.build()
        for step in range(start_step, start_step + steps):
            for micro in range(plan.accumulation):
                images, keys, _ = pipe.run()
                keys = key_strings(keys)
                assert keys == [str(k) for k in catalog.keys[plan.sample_indices(order, step, micro, rank)]]
                dealt.append((step, rank, micro, keys))
                for i, key in enumerate(keys):
                    out.setdefault(step, {})[key] = np.asarray(images[i])
        del pipe
    return out, dealt


def test_dali_reads_the_same_global_batches_on_one_and_two_ranks(shards):
    """One rank accumulating 4 micro-batches of 2, and two ranks of one micro-batch of 4, read the
    same samples in every global batch, augmented alike (draws follow the sample's position)."""
    one, dealt_one = read_global_batches(shards, 1, 2, steps=4)
    two, dealt_two = read_global_batches(shards, 2, 4, steps=4)
    assert one.keys() == two.keys() == set(range(4))
    for step in one:
        assert one[step].keys() == two[step].keys() and len(one[step]) == 8
        for key in one[step]:
            assert np.array_equal(one[step][key], two[step][key]), (step, key)
    counts = Counter(k for _, _, _, keys in dealt_two for k in keys)
    assert max(counts.values()) <= 2      # 4 steps of 8 from 30-sample epochs: at most twice each


def test_dali_resumes_at_a_global_step(shards):
    """A pipeline built at start_step s reads what an uninterrupted one reads from step s; on
    another world size too."""
    full, _ = read_global_batches(shards, 2, 4, steps=3)
    resumed, _ = read_global_batches(shards, 1, 4, steps=1, start_step=2)
    assert resumed[2].keys() == full[2].keys()
    assert all(np.array_equal(resumed[2][k], full[2][k]) for k in full[2])


def test_backgrounds_are_read_only_where_they_are_swapped_in(shards):
    """A pre-training source reads a position's background only where its coin (the first own
    draw) is below background_p and the sample has a mask; the swap flag says which."""
    from types import SimpleNamespace
    catalog = Catalog.of(shards, ["jpg", "mask.png"])
    backgrounds = Catalog.of(shards, ["jpg"])
    plan = BatchPlan(24, 1, 24)
    source = RankSource(catalog, GlobalOrder(N, seed=2, salt="source"), plan, 0, draws=3, backgrounds=backgrounds,
                        background_order=GlobalOrder(N, seed=2, salt="backgrounds"), background_p=0.5)
    assert source.names[-2:] == ("background", "swap")
    swaps = []
    for iteration in range(4):
        *_, draws, background, swap = source(SimpleNamespace(iteration=iteration))
        rows = plan.sample_indices(source.order, iteration, 0, 0)
        has_mask = catalog.sizes[rows, 1] >= 0
        assert np.array_equal(swap, (draws[:, 0] < 0.5) & has_mask)
        assert [len(b) > 0 for b in background] == swap.tolist()
        swaps.extend(swap)
    assert 0.2 < np.mean(swaps) < 0.5          # about half of the two thirds with a mask
    everything = RankSource(catalog, source.order, plan, 0, draws=3, backgrounds=backgrounds,
                            background_order=source.background_order, background_p=1.0)
    *_, background, swap = everything(SimpleNamespace(iteration=0))
    assert np.array_equal(swap, catalog.sizes[plan.sample_indices(source.order, 0, 0, 0), 1] >= 0)


def test_dali_names_the_shard_and_sample_it_cannot_read(shards, tmp_path):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    catalog = Catalog.of(copy, ["jpg", "mask.png"])
    victim = int(GlobalOrder(N, seed=5, salt="source").sample_at([0])[0])   # the first sample read
    shard = Path(catalog.shards[catalog.shard_of[victim]])
    with open(shard, "r+b") as f:
        f.truncate(int(catalog.offsets[victim, 0]) + 5)
    source = RankSource(catalog, GlobalOrder(N, seed=5, salt="source"), BatchPlan(8, 1, 4), 0, draws=3,
                        augment=Augment(), input_size=SIDE)
    pipe = augmenting_pipeline(source, batch_size=4, num_threads=1, device_id=None, seed=0, **worker_kwargs(1))
    pipe.build()
    with pytest.raises(Exception, match=f"truncated shard.*file {shard}, sample {catalog.keys[victim]}"):
        pipe.run()
