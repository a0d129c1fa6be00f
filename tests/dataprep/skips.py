"""Reading what `--skip-bad` left out of a converted split: every skipped item in skipped.jsonl,
summarised (count per kind of reason, the first keys) in manifest.json."""
import json

from shards import read_manifest


def read_skips(split_dir) -> list[dict]:
    """The skipped.jsonl entries (item, key, reason, file) of one split, after checking that the
    manifest's summary agrees with them."""
    summary = read_manifest(split_dir)["skipped"]
    path = split_dir / summary["file"]
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    assert summary["count"] == len(entries) == sum(summary["by_reason"].values())
    assert summary["first"] == [{"key": e["key"], "reason": e["reason"]} for e in entries[:10]]
    for e in entries:   # the location is in its own fields, not in the reason
        assert set(e) == {"item", "key", "reason", "file"} and "(file " not in e["reason"]
    return entries
