"""Evaluation output: results.json, paper-style Markdown tables, PCK curves and contact sheets.

    write_results(run_dir, evaluations, **extra)  -> run_dir/results.json (every number, the
                                                     checkpoint, the shards, the code version)
    evaluation_record(result, method=..., ...)    -> one entry of results.json's "evaluations"
    results_table(evaluations)                    -> Markdown laid out like the paper's Tables 1/2
    compare(run_dirs)                             -> one table over several runs' results.json
    draw_pck_curves(curves, path)                 -> PNG of 3D PCK curves
    contact_sheet(sections, joint_order, path)    -> PNG of best/worst predictions like Figs. 3-5

Figures are drawn with PIL (matplotlib is not a dependency).
"""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from shards.files import atomic_write_text, json_default
from shards.joints import BONES

from .metrics import ProtocolResult

RESULTS_FILE = "results.json"
RESULTS_SCHEMA = 1

# Column labels and order of the paper's tables (dataset ids as the converters write them).
DATASET_LABELS = {
    "stb": "STB", "rhd": "RHD", "panoptic": "PAN", "ganerated": "GAN", "freihand": "FreiHAND",
    "pw3d": "3DPW", "mpi_inf_3dhp": "3DHP", "surreal": "SURREAL", "h36m": "H3.6M",
}
# The paper's full method under domain adaptation (docs/method.md), for a reference row.
PAPER_RESULTS = {
    "epe": {"stb": 19.2, "rhd": 28.0, "panoptic": 21.2, "ganerated": 33.2},
    "mpjpe": {"pw3d": 78.1, "mpi_inf_3dhp": 93.6, "surreal": 83.1},
    "pa_mpjpe": {"pw3d": 54.9, "mpi_inf_3dhp": 74.8, "surreal": 55.0},
}
PAPER_ROW = "Ours, paper (DA)"
# Headline columns per kind of protocol: EPE for hands (Table 1), MPJPE / PA-MPJPE for bodies (Table 2).
TABLE_METRICS = {"epe": ("epe",), "mpjpe": ("mpjpe", "pa_mpjpe")}
METRIC_LABELS = {"epe": "EPE", "pa_epe": "PA-EPE", "mpjpe": "MPJPE", "pa_mpjpe": "PA-MPJPE",
                 "auc": "AUC", "pck": "PCK"}
DEFAULT_PROTOCOLS = ("hand", "h36m17")   # columns from other protocols carry the protocol's name


# -- code version and results.json ----------------------------------------------------------
def code_version(repo_dir=None) -> str:
    """`git describe --always --dirty` of the checkout holding this code (or `repo_dir`); when
    git or the checkout is missing, the installed package version, marked as such."""
    repo_dir = Path(repo_dir) if repo_dir else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=repo_dir, check=True,
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip()
    except FileNotFoundError:
        reason = "git not installed"
    except subprocess.CalledProcessError as e:
        reason = (e.stderr or "").strip().splitlines()[0] if (e.stderr or "").strip() else "git describe failed"
    try:
        package = importlib.metadata.version("posemae")
    except importlib.metadata.PackageNotFoundError:
        package = "not installed"
    return f"posemae {package} (no git version: {reason})"


def evaluation_record(result: ProtocolResult, *, method: str, checkpoint, dataset: str, shards,
                      keys=None, **extra) -> dict:
    """One (checkpoint, shard set, protocol) evaluation as a JSON-ready dict: the summary, the
    PCK curve, and every per-sample value keyed by sample key. `method` labels the table row
    (e.g. "Ours", "Scratch"); `dataset` is the shard meta's dataset id (e.g. "rhd")."""
    n = len(next(iter(result.per_sample.values())))
    if keys is not None and len(keys) != n:
        raise ValueError(f"{len(keys)} keys for {n} evaluated samples")
    return {
        "method": method,
        "checkpoint": None if checkpoint is None else str(checkpoint),   # None: a baseline, no model
        "dataset": dataset,
        "shards": [str(s) for s in (shards if isinstance(shards, (list, tuple)) else [shards])],
        "protocol": result.protocol.to_dict(),
        "metrics": dict(result.summary),
        "pck_curve": {"thresholds_mm": list(result.pck_curve[0]), "values": list(result.pck_curve[1])},
        "per_sample": {"keys": None if keys is None else [str(k) for k in keys],
                       **{name: np.asarray(v, np.float64).tolist() for name, v in result.per_sample.items()}},
        **extra,
    }


def write_results(run_dir, evaluations: list[dict], **extra) -> Path:
    """Write run_dir/results.json atomically. `extra` (e.g. the command's options) is stored at
    the top level. NaN/inf are refused: every number must be a real one."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    doc = {"schema": RESULTS_SCHEMA, "code_version": code_version(),
           "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           **extra, "evaluations": list(evaluations)}
    try:
        text = json.dumps(doc, indent=1, default=json_default, allow_nan=False)
    except ValueError as e:
        raise ValueError(f"results for {run_dir} contain NaN or inf: {e}") from None
    path = run_dir / RESULTS_FILE
    atomic_write_text(path, text)
    return path


def read_results(run_dir) -> dict:
    """results.json of a run directory (or the file itself)."""
    path = Path(run_dir)
    path = path / RESULTS_FILE if path.is_dir() else path
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: evaluate the run first")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or "evaluations" not in doc:
        raise ValueError(f"{path} has no 'evaluations' list: not a results.json")
    return doc


# -- tables ---------------------------------------------------------------------------------
def _metric_key(metrics: dict, name: str) -> str | None:
    """'auc' and 'pck' pick the protocol's AUC ("auc_20_50") / first single-threshold PCK
    ("pck@150"); other names are summary keys as they are."""
    if name in ("auc", "pck"):
        prefix = "auc_" if name == "auc" else "pck@"
        found = [k for k in metrics if k.startswith(prefix)]
        return found[0] if found else None
    return name if name in metrics else None


def _is_fraction(metric: str) -> bool:
    """PCK and AUC: fractions in [0, 1], higher is better (errors: mm, lower is better)."""
    return metric.startswith(("auc", "pck"))


def _column_label(dataset: str, protocol: str, metric_key: str, n_metrics: int) -> str:
    label = DATASET_LABELS.get(dataset, dataset)
    if protocol not in DEFAULT_PROTOCOLS:
        label += f" [{protocol}]"
    if n_metrics == 1:
        return label
    if metric_key.startswith("auc_"):
        name = "AUC " + "-".join(metric_key.split("_")[1:])
    elif metric_key.startswith("pck@"):
        name = "PCK@" + metric_key[4:]
    else:
        name = METRIC_LABELS.get(metric_key, metric_key)
    return f"{label} {name}"


def results_table(evaluations: list[dict], metrics=None, paper: bool = False, digits: int = 1) -> str:
    """Markdown table: one row per method (checkpoint), one column per target dataset (and
    metric), best value per column in bold (lowest error, highest PCK/AUC). Hands show EPE,
    bodies MPJPE and PA-MPJPE (the paper's Tables 1 and 2); `metrics` overrides, e.g.
    ("epe", "auc"). All evaluations must be of one kind (hands or bodies): use compare() to
    mix. `paper` adds the paper's reported numbers as a reference row."""
    if not evaluations:
        raise ValueError("no evaluations to tabulate")
    kinds = {e["protocol"]["metric"] for e in evaluations}
    if len(kinds) != 1:
        raise ValueError(f"one table holds one kind of metric, got {sorted(kinds)}: use compare()")
    kind = kinds.pop()
    metrics = tuple(metrics or TABLE_METRICS.get(kind, (kind,)))

    rows: dict[str, dict] = {}
    columns: list[tuple] = []   # (dataset, protocol, metric)
    keys: dict[tuple, str] = {}  # column -> the summary key shown (e.g. "pck@150")
    for e in evaluations:
        row = rows.setdefault(e["method"], {})
        for m in metrics:
            key = _metric_key(e["metrics"], m)
            if key is None:
                continue
            value = e["metrics"][key]
            col = (e["dataset"], e["protocol"]["name"], m)
            keys.setdefault(col, key)
            if col in row:
                raise ValueError(f"two evaluations of {e['method']!r} on {col[0]} ({col[1]}, {m}): "
                                 "give them different method labels")
            row[col] = float(value)
            if col not in columns:
                columns.append(col)
    if paper:
        ref = {}
        for m in metrics:
            for dataset, value in PAPER_RESULTS.get(m, {}).items():
                col = (dataset, DEFAULT_PROTOCOLS[0] if kind == "epe" else DEFAULT_PROTOCOLS[1], m)
                if col in columns:
                    ref[col] = value
        if ref:
            rows[PAPER_ROW] = ref
    order = list(DATASET_LABELS)
    columns.sort(key=lambda c: (order.index(c[0]) if c[0] in order else len(order), c[0], c[1], metrics.index(c[2])))

    best = {}
    for col in columns:
        values = [r[col] for name, r in rows.items() if col in r and name != PAPER_ROW]
        if len(values) > 1:                                     # bold only a real comparison
            higher_is_better = _is_fraction(col[2])
            best[col] = max(values) if higher_is_better else min(values)
    header = ["Method"] + [_column_label(d, p, keys.get((d, p, m), m), len(metrics)) for d, p, m in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * len(columns)) + "|"]
    for name, r in rows.items():
        cells = []
        for col in columns:
            if col not in r:
                cells.append("-")
                continue
            text = f"{r[col]:.{3 if _is_fraction(col[2]) else digits}f}"
            if name != PAPER_ROW and r[col] == best.get(col):
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join([name] + cells) + " |")
    unit = "mm; PCK/AUC as fractions" if any(_is_fraction(m) for m in metrics) else "mm"
    caption = {"epe": "Hands: EPE", "mpjpe": "Bodies: MPJPE / PA-MPJPE"}.get(kind, kind)
    return f"{caption} ({unit}); best per column in bold.\n\n" + "\n".join(lines) + "\n"


def compare(run_dirs, metrics=None, paper: bool = False) -> str:
    """One Markdown table (one per kind: hands, bodies) over the results.json of several runs.
    Rows are the runs' method labels, prefixed with the run directory's name where two runs use
    the same label."""
    loaded = [(Path(d), read_results(d)) for d in run_dirs]
    if not loaded:
        raise ValueError("compare needs at least one run directory")
    label_runs: dict[str, set] = {}
    for d, doc in loaded:
        for e in doc["evaluations"]:
            label_runs.setdefault(e["method"], set()).add(d)
    by_kind: dict[str, list] = {}
    for d, doc in loaded:
        for e in doc["evaluations"]:
            e = dict(e)
            if len(label_runs[e["method"]]) > 1:
                e["method"] = f"{d.name}: {e['method']}"
            by_kind.setdefault(e["protocol"]["metric"], []).append(e)
    if not by_kind:
        raise ValueError(f"no evaluations in {[str(d) for d, _ in loaded]}")
    return "\n".join(results_table(by_kind[k], metrics, paper) for k in sorted(by_kind))


# -- drawing helpers ------------------------------------------------------------------------
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
GT_COLOUR, PRED_COLOUR = (40, 200, 60), (230, 40, 40)


def _font(size: int):
    return ImageFont.load_default(size=size)


def _nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    raw = (hi - lo) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    step = min((s * magnitude for s in (1, 2, 2.5, 5, 10) if s * magnitude >= raw), default=raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def draw_pck_curves(curves: dict, path, title: str = "3D PCK", size=(640, 480)) -> Path:
    """PCK curves on one plot. curves: {label: (thresholds_mm, pck_values in [0, 1])}; put the
    AUC in the label if it should show. Written as PNG."""
    if not curves:
        raise ValueError("no PCK curves to draw")
    w, h = size
    left, right, top, bottom = 70, 20, 40, 60
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    font, small = _font(15), _font(12)
    x_lo = min(min(t) for t, _ in curves.values())
    x_hi = max(max(t) for t, _ in curves.values())
    if x_hi <= x_lo:
        x_hi = x_lo + 1.0

    def to_px(x, y):
        return (left + (x - x_lo) / (x_hi - x_lo) * (w - left - right), top + (1.0 - y) * (h - top - bottom))

    for x in _nice_ticks(x_lo, x_hi):
        px, _ = to_px(x, 0)
        draw.line([(px, top), (px, h - bottom)], fill=(225, 225, 225))
        draw.text((px, h - bottom + 6), f"{x:g}", fill="black", font=small, anchor="mt")
    for y in np.linspace(0, 1, 6):
        _, py = to_px(x_lo, y)
        draw.line([(left, py), (w - right, py)], fill=(225, 225, 225))
        draw.text((left - 6, py), f"{y:.1f}", fill="black", font=small, anchor="rm")
    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    draw.text(((left + w - right) / 2, h - 22), "error threshold (mm)", fill="black", font=font, anchor="mm")
    draw.text((12, (top + h - bottom) / 2), "PCK", fill="black", font=font, anchor="lm")
    draw.text((w / 2, 18), title, fill="black", font=font, anchor="mm")
    for i, (t, p) in enumerate(curves.values()):
        points = [to_px(float(x), float(np.clip(y, 0, 1))) for x, y in zip(t, p)]
        draw.line(points, fill=PALETTE[i % len(PALETTE)], width=3, joint="curve")
    # Legend bottom-right: PCK rises with the threshold, so that corner is usually empty.
    lx, ly0 = w - right - 220, h - bottom - 12 - 20 * len(curves)
    draw.rectangle([lx - 6, ly0 - 4, w - right - 4, h - bottom - 6], fill="white", outline=(200, 200, 200))
    for i, label in enumerate(curves):
        ly = ly0 + 8 + 20 * i
        draw.line([(lx, ly), (lx + 24, ly)], fill=PALETTE[i % len(PALETTE)], width=3)
        draw.text((lx + 30, ly), str(label), fill="black", font=small, anchor="lm")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def attention_colours(values: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB uint8 on a dark-blue -> red -> yellow ramp (a perceptually ordered heat map)."""
    stops = np.array([[0, 0, 40], [40, 0, 140], [200, 0, 80], [255, 120, 0], [255, 255, 120]], np.float64)
    x = np.clip(values, 0, 1) * (len(stops) - 1)
    i = np.minimum(x.astype(int), len(stops) - 2)
    f = (x - i)[..., None]
    return ((1 - f) * stops[i] + f * stops[i + 1]).astype(np.uint8)


def overlay_attention(image: np.ndarray, attention, alpha: float = 0.55) -> Image.Image:
    """Blend a class-token attention map (N patch values, or an h x w grid) over the image it
    was computed on; the map is min-max normalised and upsampled bilinearly to the image."""
    att = np.asarray(attention, np.float64)
    if att.ndim == 1:
        side = int(round(math.sqrt(att.size)))
        if side * side != att.size:
            raise ValueError(f"attention over {att.size} patches is not a square grid: pass it as (h, w)")
        att = att.reshape(side, side)
    span = att.max() - att.min()
    att = (att - att.min()) / span if span > 0 else np.zeros_like(att)
    h, w = image.shape[:2]
    up = np.asarray(Image.fromarray(att.astype(np.float32)).resize((w, h), Image.BILINEAR))
    blended = (1 - alpha) * image.astype(np.float64) + alpha * attention_colours(up)
    return Image.fromarray(blended.clip(0, 255).astype(np.uint8))


def draw_skeleton_2d(img: Image.Image, uv, joint_order: str, colour, width: int = 2, radius: float = 2.5) -> None:
    draw = ImageDraw.Draw(img)
    uv = np.asarray(uv, np.float64)
    for a, b in BONES.get(joint_order, []):
        draw.line([tuple(uv[a]), tuple(uv[b])], fill=colour, width=width)
    for u, v in uv:
        draw.ellipse([u - radius, v - radius, u + radius, v + radius], fill=colour)


def view_3d(pred, gt, joint_order: str, azimuth_deg: float, size: int, label: str) -> Image.Image:
    """Orthographic view of predicted (red) and ground-truth (green) 3D skeletons, both moved
    to the ground truth's root, turned by `azimuth_deg` about the camera's vertical (Y) axis:
    0 = the camera's view (X right, Y down), 90 = from the side (depth to the right)."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    pred = pred - pred[0] + gt[0]
    a = math.radians(azimuth_deg)
    turn = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    centre = gt.mean(axis=0)
    p2, g2 = ((pred - centre) @ turn.T)[:, :2], ((gt - centre) @ turn.T)[:, :2]
    extent = max(np.abs(np.concatenate([p2, g2])).max(), 1e-6)
    scale = 0.42 * size / extent
    img = Image.new("RGB", (size, size), (250, 250, 250))
    for joints, colour in ((g2, GT_COLOUR), (p2, PRED_COLOUR)):
        draw_skeleton_2d(img, joints * scale + size / 2, joint_order, colour, width=2, radius=2)
    ImageDraw.Draw(img).text((4, size - 4), label, fill=(60, 60, 60), font=_font(11), anchor="ld")
    return img


@dataclass
class SheetItem:
    """One prediction on the contact sheet. `image` is what the model saw (or the stored crop)
    with uv_* in its pixels; `attention` is the last block's class-token attention over the
    patches of that image ((N,) or (h, w)), or None."""
    image: np.ndarray
    uv_pred: np.ndarray
    uv_gt: np.ndarray | None
    joints_pred: np.ndarray
    joints_gt: np.ndarray
    attention: np.ndarray | None = None
    title: str = ""


def select_best_worst(errors, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the k lowest (ascending) and k highest (descending) per-sample errors."""
    order = np.argsort(np.asarray(errors, np.float64), kind="stable")
    k = min(k, len(order))
    return order[:k], order[::-1][:k]


def contact_sheet(sections: dict, joint_order: str, path, tile: int = 160) -> Path:
    """Rows of [2D overlay | 3D front | 3D side | attention overlay] per item, under a heading
    per section, e.g. {"best": [...], "worst": [...]} (SheetItem lists), like the paper's
    Figures 3-5. Ground truth green, prediction red. Written as PNG."""
    if joint_order not in BONES:
        raise ValueError(f"no bones for joint order {joint_order!r}; known: {sorted(BONES)}")
    heading = 26
    n_rows = sum(len(items) for items in sections.values())
    if n_rows == 0:
        raise ValueError("contact sheet has no items")
    width = 4 * tile
    board = Image.new("RGB", (width, heading * len(sections) + n_rows * (tile + 16)), "white")
    draw = ImageDraw.Draw(board)
    font, small = _font(16), _font(11)
    y = 0
    for name, items in sections.items():
        draw.text((6, y + heading / 2), f"{name}   (ground truth green, prediction red)", fill="black", font=font, anchor="lm")
        y += heading
        for item in items:
            image = np.asarray(item.image, np.uint8)
            scale = tile / max(image.shape[:2])
            overlay = Image.fromarray(image).convert("RGB")
            overlay = overlay.resize((round(overlay.width * scale), round(overlay.height * scale)))
            if item.uv_gt is not None:
                draw_skeleton_2d(overlay, np.asarray(item.uv_gt) * scale, joint_order, GT_COLOUR)
            draw_skeleton_2d(overlay, np.asarray(item.uv_pred) * scale, joint_order, PRED_COLOUR)
            tiles = [overlay,
                     view_3d(item.joints_pred, item.joints_gt, joint_order, 0, tile, "3D, camera view"),
                     view_3d(item.joints_pred, item.joints_gt, joint_order, 90, tile, "3D, side view")]
            if item.attention is not None:
                att = overlay_attention(image, item.attention)
                tiles.append(att.resize((round(att.width * scale), round(att.height * scale))))
            else:
                blank = Image.new("RGB", (tile, tile), (235, 235, 235))
                ImageDraw.Draw(blank).text((tile / 2, tile / 2), "no attention", fill="gray", font=small, anchor="mm")
                tiles.append(blank)
            for i, t in enumerate(tiles):
                board.paste(t, (i * tile, y))
            draw.text((4, y + tile + 8), item.title, fill="black", font=small, anchor="lm")
            y += tile + 16
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    board.save(path)
    return path
