"""The global sample order (shards.order) and the DALI external source that reads in it
(shards.ordered_source), on real shards written by the real writer and a real DALI CPU pipeline
with spawned reader workers."""
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from nvidia.dali import fn, pipeline_def, types

from shards.order import BatchPlan, Catalog, GlobalOrder, eval_rows, split_global_batch
from shards.ordered_source import RankSource, key_strings, ordered_reader, worker_kwargs
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
    assert split_global_batch(4096, 0.25) == (3072, 1024)


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


# -- DALI in the global order -----------------------------------------------------------------------
@pipeline_def
def augmenting_pipeline(source, per_batch=True):
    """Decode, then a brightness and a crop drawn from the sample's own draws (u)."""
    jpg, png, key, position, u = ordered_reader(source, per_batch=per_batch)
    image = fn.decoders.image(jpg, output_type=types.RGB)
    image = fn.crop(image, crop=[24, 24], crop_pos_x=u[0], crop_pos_y=u[1])
    image = fn.cast(image, dtype=types.FLOAT) * (0.5 + u[2])
    return image, key, position, png.shape()      # mask.png bytes: present or empty


def read_global_batches(shards, world_size, micro_batch, steps, start_step=0, per_batch=True):
    """{step: {key: image}} over every rank of a world, and the per-rank micro-batch key lists."""
    catalog = Catalog.of(shards, ["jpg", "mask.png"])
    order = GlobalOrder(len(catalog), seed=5, salt="source")
    plan = BatchPlan(8, world_size, micro_batch)
    out, dealt = {}, []
    for rank in range(world_size):
        source = RankSource(catalog, order, plan, rank, start_step=start_step, draws=3)
        pipe = augmenting_pipeline(source, per_batch, batch_size=micro_batch, num_threads=1, device_id=None,
                                   seed=rank, **worker_kwargs(2))
        pipe.build()
        for step in range(start_step, start_step + steps):
            for micro in range(plan.accumulation):
                images, keys, positions, _ = pipe.run()
                keys = key_strings(keys)
                assert [int(np.asarray(positions[i])[0]) for i in range(len(keys))] == \
                    list(plan.positions(N, step, micro, rank))
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
    another world size too, and with the workers asked sample by sample instead of per batch."""
    full, _ = read_global_batches(shards, 2, 4, steps=3)
    resumed, _ = read_global_batches(shards, 1, 4, steps=1, start_step=2, per_batch=False)
    assert resumed[2].keys() == full[2].keys()
    assert all(np.array_equal(resumed[2][k], full[2][k]) for k in full[2])


def test_dali_names_the_shard_and_sample_it_cannot_read(shards, tmp_path):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    catalog = Catalog.of(copy, ["jpg", "mask.png"])
    victim = int(GlobalOrder(N, seed=5, salt="source").sample_at([0])[0])   # the first sample read
    shard = Path(catalog.shards[catalog.shard_of[victim]])
    with open(shard, "r+b") as f:
        f.truncate(int(catalog.offsets[victim, 0]) + 5)
    source = RankSource(catalog, GlobalOrder(N, seed=5, salt="source"), BatchPlan(8, 1, 4), 0, draws=3)
    pipe = augmenting_pipeline(source, batch_size=4, num_threads=1, device_id=None, seed=0, **worker_kwargs(1))
    pipe.build()
    with pytest.raises(Exception, match=f"truncated shard.*file {shard}, sample {catalog.keys[victim]}"):
        pipe.run()
