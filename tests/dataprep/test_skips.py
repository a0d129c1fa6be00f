"""--skip-bad on a partial download: the manifest keeps a summary (count per reason, the first
keys) and skipped.jsonl names every skipped sample by its real key; a killed and resumed
conversion lists each skip once."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from dataprep.cli import cli
from dataprep.common import SKIP_EXAMPLES, convert_split
from shards import iter_samples, read_manifest
from shards.schema import Sample, SampleError
from tests.dataprep.skips import read_skips
from tests.dataprep.test_freihand import make_freihand

N = 15                         # FreiHAND training ids: 4 x 15 = 60 images


def test_freihand_partial_download(tmp_path):
    src, out = tmp_path / "FreiHAND_pub_v2", tmp_path / "out"
    make_freihand(src, n_train=N, n_eval=1)
    kept = {3, 17, 18, 29, 30, 44, 58, 59}                     # 8 of the 60 images were downloaded
    for i in range(4 * N):
        if i not in kept:
            (src / "training" / "rgb" / f"{i:08d}.jpg").unlink()
    res = CliRunner().invoke(cli, ["freihand", str(src), str(out), "--splits", "train", "--skip-bad", "--crop-size", "64"])
    assert res.exit_code == 0, res.output
    assert "8 samples in 1 shards, 52 skipped" in res.output
    assert sorted(int(s.key.rsplit("_", 1)[1]) for s in iter_samples(out / "train")) == sorted(kept)
    man = read_manifest(out / "train")
    assert man["skipped"]["count"] == 52 and man["skipped"]["by_reason"] == {"image file missing": 52}
    assert len(man["skipped"]["first"]) == SKIP_EXAMPLES
    skips = read_skips(out / "train")
    assert sorted(s["key"] for s in skips) == [f"freihand_train_{i:08d}" for i in range(4 * N) if i not in kept]
    assert all(s["file"] == str(src / "training" / "rgb" / (s["key"].replace("freihand_train_", "") + ".jpg"))
               for s in skips)
    # the manifest no longer grows with the number of skips
    assert (out / "train" / "manifest.json").stat().st_size < 8000


# -- resume ------------------------------------------------------------------------------------
def make_sample(item, *, crash_at=None):
    if item == crash_at:
        raise KeyboardInterrupt        # the run is killed here
    if item % 3 == 0:
        raise SampleError(f"frame {item} has NaN", file=f"anno_{item // 10}.json", sample=f"s_{item:03d}")
    if item % 7 == 0:
        raise SampleError("image file missing", file=f"img_{item}.png")          # no sample named
    return [Sample(key=f"s_{item:03d}", image=np.full((8, 8, 3), item, np.uint8),
                   meta={"dataset": "t", "split": "train", "source": str(item), "joint_order": "none",
                         "root_index": None})]


def test_skips_survive_a_killed_run(tmp_path):
    items = list(range(40))
    kw = dict(skip_bad=True, shard_count=4, item_key=lambda i: f"item_{i}", shuffle_seed=None)
    whole = convert_split(items, make_sample, tmp_path / "whole", **kw)
    with pytest.raises(KeyboardInterrupt):
        convert_split(items, lambda i: make_sample(i, crash_at=33), tmp_path / "resumed", **kw)
    lines = (tmp_path / "resumed" / "skipped.jsonl").read_text().splitlines()
    assert [json.loads(x)["item"] for x in lines][-1] == 30       # skips after the last complete shard too
    resumed = convert_split(items, make_sample, tmp_path / "resumed", **kw)
    assert resumed["skipped"] == whole["skipped"]
    assert read_skips(tmp_path / "resumed") == read_skips(tmp_path / "whole")
    skips = read_skips(tmp_path / "whole")
    bad = [i for i in items if i % 3 == 0 or i % 7 == 0]
    assert [s["item"] for s in skips] == bad
    assert [s["key"] for s in skips] == [f"s_{i:03d}" if i % 3 == 0 else f"item_{i}" for i in bad]
    assert whole["skipped"]["by_reason"] == {"frame # has NaN": 14, "image file missing": 4}
    assert [s.key for s in iter_samples(tmp_path / "resumed")] == [f"s_{i:03d}" for i in items if i not in bad]
