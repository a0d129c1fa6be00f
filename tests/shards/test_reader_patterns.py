import json

import pytest

from shards.reader import list_shards, read_manifest


def test_a_brace_list_longer_than_a_file_name(tmp_path):
    """segnet's train/hold-out split names shards in a brace list; with hundreds of shards the
    list is longer than NAME_MAX (255), and stat-ing it whole raised ENAMETOOLONG."""
    names = [f"shard-{i:06d}.tar" for i in range(40)]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "manifest.json").write_text(json.dumps({"dataset": "x", "samples": 0}))
    pattern = f"{tmp_path}/{{{','.join(names)}}}"
    assert len(pattern.rsplit("/", 1)[1]) > 255
    assert list_shards(pattern) == [tmp_path / n for n in names]
    assert read_manifest(pattern)["dataset"] == "x"
    with pytest.raises(FileNotFoundError, match="shard-000099.tar"):
        list_shards(f"{tmp_path}/{{{','.join(names + ['shard-000099.tar'])}}}")
