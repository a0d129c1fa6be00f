"""`trainer demo --scale tiny`: every step of the method as a user runs it, end to end, in one
test (about a minute and a half on 2 cores). The numbers of a one-epoch tiny run mean nothing;
what is checked is that the demo's outputs hold what the README says they hold."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_tiny_demo_writes_summary_with_baseline_and_both_splits(tmp_path):
    out = tmp_path / "demo"
    # Not the rendezvous of this pytest process (other tests start a world of one in-process):
    # each demo step is a plain command that makes its own.
    inherited = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in inherited}
    env["POSEMAE_FORCE_CPU"] = "1"
    proc = subprocess.run([sys.executable, "-m", "trainer", "demo", "--scale", "tiny", "--out", str(out)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == {"Scratch", "MAE", "Ours (FCR+BG+AR)"}
    for row in [summary["mean_pose"], *summary["methods"].values()]:
        assert set(row) == {"source_epe_mm", "target_epe_mm"}
        assert all(math.isfinite(v) and 0 < v < 1000 for v in row.values())
    assert summary["seconds"] > 0

    results = json.loads((out / "results" / "results.json").read_text())
    datasets = {(e["method"], e["dataset"]) for e in results["evaluations"]}
    for method in ("Mean source pose (constant)", "Scratch", "MAE", "Ours (FCR+BG+AR)"):
        assert {(method, "freihand"), (method, "rhd")} <= datasets
    constant = [e for e in results["evaluations"] if e["checkpoint"] is None]
    assert {e["dataset"]: e["metrics"]["epe"] for e in constant} == {
        "freihand": summary["mean_pose"]["source_epe_mm"], "rhd": summary["mean_pose"]["target_epe_mm"]}

    # the table printed at the end, and a log without carriage-return progress redraws
    assert "| Mean source pose (constant) |" in proc.stdout and "| Scratch |" in proc.stdout
    log = (out / "demo.log").read_text()
    assert "\r" not in log and "finetune: " in log
