"""trainer.report: results.json, paper-style tables, compare(), PCK curve and contact sheet PNGs."""
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer import report
from trainer.metrics import evaluate
from trainer.report import (GT_COLOUR, PALETTE, PRED_COLOUR, SheetItem, compare, contact_sheet, draw_pck_curves,
                            evaluation_record, read_results, results_table, select_best_worst, write_results)

REPO = Path(__file__).resolve().parents[2]


def hand_gt(batch=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-60, 60, size=(batch, 21, 3)) + np.array([0, 0, 500.0])


def hand_record(method, dataset, offset_mm, run="runs/x", protocol="hand"):
    """Predictions whose 20 non-root joints are `offset_mm` too deep: EPE = 20/21 * offset."""
    gt = hand_gt()
    pred = gt.copy()
    pred[:, 1:, 2] += offset_mm
    result = evaluate(pred, gt, np.ones((4, 21), bool), protocol)
    return evaluation_record(result, method=method, checkpoint=f"{run}/checkpoints/step100", dataset=dataset,
                             shards=[f"shards/{dataset}/test"], keys=[f"{dataset}_{i}" for i in range(4)])


def body_record(method, dataset, offset_mm):
    rng = np.random.default_rng(1)
    gt = rng.uniform(-500, 500, size=(3, 17, 3)) + np.array([0, 0, 4000.0])
    pred = gt.copy()
    pred[:, 1:, 0] += offset_mm
    return evaluation_record(evaluate(pred, gt, None, "h36m17"), method=method, checkpoint="runs/b/ckpt",
                             dataset=dataset, shards="shards/b")


def test_results_json_holds_every_number_and_the_code_version(tmp_path):
    rec = hand_record("Ours", "rhd", 21.0)
    path = write_results(tmp_path / "run", [rec], command={"ckpt": "runs/x"})
    doc = json.loads(path.read_text())
    assert path.name == "results.json" and doc["schema"] == 1
    assert doc["command"] == {"ckpt": "runs/x"}
    e = doc["evaluations"][0]
    assert e["checkpoint"] == "runs/x/checkpoints/step100" and e["shards"] == ["shards/rhd/test"]
    assert e["metrics"]["epe"] == pytest.approx(20.0)
    assert e["per_sample"]["keys"] == ["rhd_0", "rhd_1", "rhd_2", "rhd_3"]
    assert e["per_sample"]["epe"] == pytest.approx([20.0] * 4)
    assert e["protocol"]["name"] == "hand" and len(e["pck_curve"]["values"]) == 31
    if shutil.which("git"):
        expected = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True)
        if expected.returncode == 0:
            assert doc["code_version"] == expected.stdout.strip()
    assert read_results(tmp_path / "run") == doc
    # outside a checkout the version says so instead of failing
    assert "no git version" in report.code_version(tmp_path)


def test_results_refuse_nan_and_bad_files(tmp_path):
    rec = hand_record("Ours", "rhd", 10.0)
    rec["metrics"]["epe"] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        write_results(tmp_path, [rec])
    assert not (tmp_path / "results.json").exists()
    with pytest.raises(FileNotFoundError, match="evaluate the run first"):
        read_results(tmp_path)
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(ValueError, match="not a results.json"):
        read_results(tmp_path)


def test_hand_table_is_laid_out_like_table_1():
    evaluations = [hand_record("Scratch", "rhd", 42.0), hand_record("Scratch", "stb", 31.5),
                   hand_record("Ours", "rhd", 29.4), hand_record("Ours", "stb", 33.6),
                   hand_record("Ours", "rhd", 29.4, protocol="hand3d")]
    table = results_table(evaluations, paper=True)
    lines = table.strip().splitlines()
    assert lines[0].startswith("Hands: EPE (mm)")
    assert lines[2] == "| Method | STB | RHD | RHD [hand3d] |"
    # EPE = 20/21 x offset: 42 -> 40.0, 31.5 -> 30.0, 29.4 -> 28.0, 33.6 -> 32.0. hand3d roots at the
    # palm, which moved by half the offset, so its 20 finger joints are off by 14.7: 20/21 x 14.7 = 14.0
    assert lines[4] == "| Scratch | **30.0** | 40.0 | - |"
    assert lines[5] == "| Ours | 32.0 | **28.0** | 14.0 |"        # a column of one: nothing to bold
    assert lines[6] == "| Ours, paper (DA) | 19.2 | 28.0 | - |"
    with pytest.raises(ValueError, match="two evaluations"):
        results_table(evaluations + [hand_record("Ours", "stb", 1.0)])
    # with AUC columns the highest AUC is the bold one. Ours on RHD (every non-root joint 29.4 mm off):
    # PCK = 1/21 at 20..29 mm and 1 at 30..50 mm, so the trapezoid over the 1 mm grid gives
    with_auc = results_table(evaluations[:4], metrics=("epe", "auc")).strip().splitlines()
    assert with_auc[2] == "| Method | STB EPE | STB AUC 20-50 | RHD EPE | RHD AUC 20-50 |"
    rhd_auc = [line.split(" | ")[4].rstrip(" |") for line in with_auc[4:6]]
    ours = (9 / 21 + (1 / 21 + 1) / 2 + 20) / 30
    assert not rhd_auc[0].startswith("**") and rhd_auc[1] == f"**{ours:.3f}**"


def test_body_table_and_compare_over_runs(tmp_path):
    run_a, run_b = tmp_path / "runA", tmp_path / "runB"
    write_results(run_a, [body_record("Ours", "pw3d", 30.0), hand_record("Ours", "ganerated", 10.5)])
    mae = body_record("MAE", "surreal", 45.0)
    write_results(run_b, [body_record("Ours", "pw3d", 60.0), mae])
    text = compare([run_a, run_b])
    assert "| Method | GAN |" in text
    assert "| Method | 3DPW MPJPE | 3DPW PA-MPJPE | SURREAL MPJPE | SURREAL PA-MPJPE |" in text
    # 16 of 17 joints shifted: MPJPE = 16/17 x offset; labels collide across runs -> prefixed
    lines = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    assert f"{30 * 16 / 17:.1f}" in lines["| runA: Ours"] and f"**{30 * 16 / 17:.1f}**" in lines["| runA: Ours"]
    assert f"{60 * 16 / 17:.1f}" in lines["| runB: Ours"]
    pa = mae["metrics"]["pa_mpjpe"]
    assert 0 < pa < 45 * 16 / 17
    assert lines["| MAE"].endswith(f"| - | - | {45 * 16 / 17:.1f} | {pa:.1f} |")
    with pytest.raises(FileNotFoundError):
        compare([tmp_path / "missing"])


def test_pck_curve_png(tmp_path):
    t = np.linspace(20, 50, 31)
    path = draw_pck_curves({"A (AUC 0.50)": (t, (t - 20) / 30), "B": (t, np.ones_like(t))}, tmp_path / "pck.png")
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert img.shape == (480, 640, 3)
    # curve A passes through (35 mm, 0.5): x = 70 + 0.5 * 550, y = 40 + 0.5 * 380 in the plot box
    patch = img[228:233, 343:348].reshape(-1, 3)
    assert (np.abs(patch - PALETTE[0]).sum(1) < 30).any()
    # curve B runs along PCK = 1 (y = 40) in the second colour, well inside the plot
    assert (np.abs(img[39:42, 200] - PALETTE[1]).sum(1) < 30).any()


def test_contact_sheet_png(tmp_path):
    tile = 128
    rng = np.random.default_rng(2)
    image = np.zeros((256, 256, 3), np.uint8)
    uv_gt = rng.uniform(40, 90, size=(21, 2))
    uv_pred = uv_gt + np.array([120.0, 120.0])              # far apart: each skeleton visible alone
    attention = np.zeros((16, 16))
    attention[:8, :8] = 1.0                                 # top-left quarter attended
    j = rng.uniform(-60, 60, size=(21, 3))
    item = SheetItem(image, uv_pred, uv_gt, j * 1.5, j, attention.ravel(), "rhd_0 EPE 8.7 mm")
    path = contact_sheet({"best": [item], "worst": [item, item]}, "hand21", tmp_path / "sheet.png", tile=tile)
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert img.shape == (2 * 26 + 3 * (tile + 16), 4 * tile, 3)
    row = 26                                                # first item row starts below the heading
    scale = tile / 256
    for uv, colour in ((uv_gt, GT_COLOUR), (uv_pred, PRED_COLOUR)):
        u, v = np.round(uv[8] * scale).astype(int)          # a fingertip joint dot
        assert (np.abs(img[row + v - 1:row + v + 2, u - 1:u + 2].reshape(-1, 3) - colour).sum(1) < 40).any()
    att = img[row:row + tile, 3 * tile:4 * tile]
    hot, cold = att[10, 10], att[tile - 10, tile - 10]      # black image: only the colour map shows
    assert hot[0] > 120 and hot[1] > 60 and cold.sum() < 60
    # the 3D tiles draw both skeletons
    for k in (1, 2):
        t = img[row:row + tile, k * tile:(k + 1) * tile].reshape(-1, 3)
        assert (np.abs(t - GT_COLOUR).sum(1) < 40).sum() > 20 and (np.abs(t - PRED_COLOUR).sum(1) < 40).sum() > 20
    with pytest.raises(ValueError, match="no bones"):
        contact_sheet({"best": [item]}, "none", tmp_path / "x.png")


def test_select_best_worst():
    best, worst = select_best_worst([5.0, 1.0, 9.0, 3.0, 7.0], 2)
    assert best.tolist() == [1, 3] and worst.tolist() == [2, 4]
