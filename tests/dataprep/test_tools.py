"""`dataprep inspect` reports 3D bone lengths per shard set: on Human3.6M and SURREAL conversions
of the same known skeleton, the SMPL-based mapping's thorax shows up as a longer pelvis-thorax
span than Human3.6M's own thorax joint."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from dataprep.cli import cli
from dataprep.tools import bone_lengths
from tests.body_fixtures import BODY
from tests.dataprep import test_h36m, test_surreal


def dist(a, b):
    return float(np.linalg.norm(np.subtract(BODY[a], BODY[b])))


def inspect_json(output: str) -> list[dict]:
    """The JSON objects `dataprep inspect` prints, one per split."""
    found, depth, start = [], 0, None
    for i, c in enumerate(output):
        if c == "{":
            depth, start = depth + 1, i if depth == 0 else start
        elif c == "}":
            depth -= 1
            if depth == 0:
                found.append(json.loads(output[start:i + 1]))
    return found


def test_inspect_bone_lengths_h36m_against_surreal(tmp_path):
    runner = CliRunner()
    seq = ("S9", "Walking", "54138969")
    test_h36m.write_original(tmp_path / "h36m", {seq: test_h36m.SEQS[seq]})
    res = runner.invoke(cli, ["h36m", str(tmp_path / "h36m"), str(tmp_path / "o_h36m"), "--splits", "test",
                              "--test-stride", "3", "--crop-size", "64"])
    assert res.exit_code == 0, res.output
    test_surreal.write_surreal(tmp_path)
    res = runner.invoke(cli, ["surreal", str(tmp_path), str(tmp_path / "o_surreal"), "--crop-size", "64"])
    assert res.exit_code == 0, res.output

    res = runner.invoke(cli, ["inspect", str(tmp_path / "o_h36m")])
    assert res.exit_code == 0, res.output
    (report,) = inspect_json(res.output)
    h36m = report["bone_lengths_mm"]
    assert h36m["pelvis-r_hip"]["n"] == 10                                  # frames 0, 3, ..., 27
    assert "r_hip-l_hip" in res.output and "median" in res.output           # the printed table
    # the fixture's skeleton, exactly: H36M's own joints
    for bone, (a, b) in {"r_hip-l_hip": ("r_hip", "l_hip"), "pelvis-thorax": ("pelvis", "thorax"),
                         "l_shoulder-r_shoulder": ("l_shoulder", "r_shoulder"), "r_knee-r_ankle": ("r_knee", "r_ankle"),
                         "thorax-neck_nose": ("thorax", "nose")}.items():
        stats = h36m[bone]
        assert stats["min"] == pytest.approx(dist(a, b), abs=0.1) and stats["max"] == pytest.approx(dist(a, b), abs=0.1)
        assert stats["std"] < 0.1

    surreal = {}
    for d in ("train", "test"):
        surreal[d] = bone_lengths(tmp_path / "o_surreal" / d, "h36m17", None)
    s = surreal["train"]
    # SMPL-24 mapping: thorax is SMPL's neck (the fixture's neck_base), neck/nose its head centre
    assert s["pelvis-thorax"]["median"] == pytest.approx(dist("pelvis", "neck_base"), abs=0.1)
    assert s["pelvis-thorax"]["median"] - h36m["pelvis-thorax"]["median"] > 25
    assert s["r_hip-l_hip"]["median"] == pytest.approx(dist("r_hip", "l_hip"), abs=0.1)
    assert s["thorax-neck_nose"]["median"] == pytest.approx(dist("neck_base", "head_centre"), abs=0.1)


def test_inspect_limits_the_samples_read(tmp_path):
    seq = ("S9", "Walking", "54138969")
    test_h36m.write_original(tmp_path / "h36m", {seq: test_h36m.SEQS[seq]})
    res = CliRunner().invoke(cli, ["h36m", str(tmp_path / "h36m"), str(tmp_path / "o"), "--splits", "test",
                                   "--test-stride", "3", "--crop-size", "64"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["inspect", str(tmp_path / "o"), "--bone-samples", "4", "--num", "2"])
    assert res.exit_code == 0, res.output
    (report,) = inspect_json(res.output)
    assert {v["n"] for v in report["bone_lengths_mm"].values()} == {4}
