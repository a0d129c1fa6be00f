"""Where a benchmark writes its result: bench/results/<name>.json for a full run, the file the
README quotes and git keeps; bench/results/quick/<name>.json for a --quick check run, which git
ignores, so checking that a benchmark still runs leaves the committed numbers and the tree alone."""
from __future__ import annotations

import json
from pathlib import Path

RESULTS_DIR = Path(__file__).parent / "results"


def results_path(name: str, quick: bool) -> Path:
    return (RESULTS_DIR / "quick" if quick else RESULTS_DIR) / f"{name}.json"


def write_results(name: str, quick: bool, data: dict, **json_options) -> Path:
    path = results_path(name, quick)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, **({"indent": 1} | json_options)))
    return path
