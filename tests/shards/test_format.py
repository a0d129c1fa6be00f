"""Shard format: schema validation, writer bounds and atomicity, DALI reads our indexes."""
import json

import numpy as np
import pytest
from nvidia.dali import fn, pipeline_def, types

from shards import Sample, SampleError, ShardWriter, encode_sample, iter_samples, list_shards, validate
from shards.reader import index_path
from tests.hand_fixtures import hand21_mm, project


def hand_sample(i: int, size: int = 64, mask: bool = True) -> Sample:
    xyz = hand21_mm((0, 0, 400 + i))
    intr = np.float32([200, 200, size / 2, size / 2])
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[0:size, 0:size]
    smooth = np.dstack([xx * 3, yy * 3, (xx + yy + 20 * i)]) % 256   # smooth: JPEG keeps it closely
    return Sample(key=f"s{i:05d}", image=smooth.astype(np.uint8),
                  mask=(rng.random((size, size)) > 0.5).astype(np.uint8) * 255 if mask else None,
                  joints3d_mm=xyz.astype(np.float32), joints2d_px=project(xyz, *intr).astype(np.float32),
                  visible=np.arange(21) % 3 > 0, intrinsics=intr,
                  meta={"dataset": "t", "split": "train", "source": f"img{i}", "joint_order": "hand21", "root_index": 0})


def test_validate_catches_bad_samples():
    s = hand_sample(0)
    validate(s)
    for mutate, message in [
        (lambda s: setattr(s, "joints3d_mm", s.joints3d_mm[:20]), "shape"),
        (lambda s: s.joints2d_px.__setitem__((3, 0), np.nan), "NaN"),
        (lambda s: setattr(s, "joints3d_mm", s.joints3d_mm / 1000), "millimetres"),
        (lambda s: s.intrinsics.__setitem__(2, 10.0), "misses joints2d_px"),
        (lambda s: setattr(s, "key", "a.b"), "key"),
        (lambda s: s.meta.pop("joint_order"), "joint_order"),
        (lambda s: setattr(s, "mask", np.zeros((3, 3), np.uint8)), "mask"),
        (lambda s: setattr(s, "intrinsics", None), "together"),
    ]:
        bad = hand_sample(0)
        mutate(bad)
        with pytest.raises(SampleError, match=message):
            validate(bad)


def test_roundtrip_and_bounds(tmp_path):
    samples = [hand_sample(i, mask=i % 2 == 0) for i in range(7)]
    with ShardWriter(tmp_path, max_count=3) as w:
        for i, s in enumerate(samples):
            w.write(s.key, encode_sample(s), i + 1)
    shards = list_shards(tmp_path)
    assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [s["count"] for s in manifest["shards"]] == [3, 3, 1] and manifest["samples"] == 7
    back = list(iter_samples(tmp_path))
    assert [b.key for b in back] == [s.key for s in samples]
    for a, b in zip(samples, back):
        np.testing.assert_array_equal(a.joints3d_mm, b.joints3d_mm)
        np.testing.assert_array_equal(a.joints2d_px, b.joints2d_px)
        np.testing.assert_array_equal(a.visible, b.visible)
        np.testing.assert_array_equal(a.intrinsics, b.intrinsics)
        assert (b.mask is None) == (a.mask is None)
        if a.mask is not None:
            np.testing.assert_array_equal(a.mask, b.mask)   # PNG is lossless
        assert np.abs(a.image.astype(int) - b.image).mean() < 3   # JPEG: lossy
    # byte bound: a sample takes 6-9 KB of tar blocks, so a 12 KB bound gives one per shard
    out = tmp_path / "small"
    with ShardWriter(out, max_count=100, max_bytes=12_000) as w:
        for i, s in enumerate(samples[:3]):
            w.write(s.key, encode_sample(s), i + 1)
    assert len(list_shards(out)) == 3


def test_dali_reads_every_shard_with_its_index(tmp_path):
    samples = [hand_sample(i, mask=i % 2 == 0) for i in range(5)]
    with ShardWriter(tmp_path, max_count=2) as w:
        for i, s in enumerate(samples):
            w.write(s.key, encode_sample(s), i + 1)
    shards = list_shards(tmp_path)

    @pipeline_def(batch_size=5, num_threads=1, device_id=None)
    def pipe():
        jpg, mask, j3, j2, vis, intr = fn.readers.webdataset(
            paths=[str(p) for p in shards], index_paths=[str(index_path(p)) for p in shards],
            ext=["jpg", "mask.png", "joints3d.f32", "joints2d.f32", "visible.u8", "intrinsics.f32"],
            dtypes=[types.UINT8, types.UINT8, types.FLOAT, types.FLOAT, types.UINT8, types.FLOAT],
            missing_component_behavior="empty", random_shuffle=False)
        return fn.decoders.image(jpg, output_type=types.RGB), mask, j3, j2, vis, intr

    p = pipe()
    p.build()
    img, mask, j3, j2, vis, intr = p.run()
    for i, s in enumerate(samples):
        assert np.asarray(img.at(i)).shape == (64, 64, 3)
        np.testing.assert_array_equal(np.asarray(j3.at(i)).reshape(21, 3), s.joints3d_mm)
        np.testing.assert_array_equal(np.asarray(j2.at(i)).reshape(21, 2), s.joints2d_px)
        np.testing.assert_array_equal(np.asarray(vis.at(i)).astype(bool), s.visible)
        np.testing.assert_array_equal(np.asarray(intr.at(i)), s.intrinsics)
        assert (np.asarray(mask.at(i)).size > 0) == (s.mask is not None)


def test_writer_refuses_to_mix_and_drops_partial(tmp_path):
    s = hand_sample(0)
    w = ShardWriter(tmp_path, max_count=10)
    w.write(s.key, encode_sample(s), 1)
    w.abort()
    assert not list(tmp_path.glob("*.tar*"))
    (tmp_path / "shard-000000.tar").write_bytes(b"")
    with pytest.raises(FileExistsError, match="progress.json"):
        ShardWriter(tmp_path)


def test_verify_names_the_first_bad_shard_and_key(tmp_path):
    from click.testing import CliRunner
    from dataprep.cli import cli
    samples = [hand_sample(i) for i in range(4)]
    with ShardWriter(tmp_path, max_count=2) as w:
        for i, s in enumerate(samples):
            members = encode_sample(s)
            if i == 3:   # a sample whose stored 3D joints went bad after validation
                members["joints3d.f32"] = np.full((21, 3), np.nan, "<f4").tobytes()
            w.write(s.key, members, i + 1)
    res = CliRunner().invoke(cli, ["verify", str(tmp_path)])
    assert res.exit_code != 0
    assert "shard-000001.tar" in res.output and "s00003" in res.output and "NaN" in res.output

    good = tmp_path / "good"
    with ShardWriter(good, max_count=2) as w:
        for i, s in enumerate(samples[:2]):
            w.write(s.key, encode_sample(s), i + 1)
    assert CliRunner().invoke(cli, ["verify", str(good)]).exit_code == 0
    shard = good / "shard-000000.tar"
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF   # flip a byte inside the first member
    shard.write_bytes(bytes(data))
    res = CliRunner().invoke(cli, ["verify", str(good)])
    assert res.exit_code != 0 and "sha256" in res.output and "shard-000000.tar" in res.output
