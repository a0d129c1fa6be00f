"""Does the method help on a synthetic domain gap? The paper's ablations on the demo generator.

Source: procedural hands in FreiHAND's layout (studio look). Target: procedural hands in RHD's
layout with the same pose and view distribution but another look (skin, lighting, clutter, a
second hand, thicker fingers, both sides). Every method fine-tunes on labelled source only and is
scored on a held-out source test split (has it learned pose?) and on the labelled target test
split (has it adapted?), next to the constant baseline (the source's mean pose):
  Scratch, MAE, w/o BG (no background replacement), w/o FCR, w/o AR, Ours (FCR + BG + AR),
each over several seeds (the data is the same; initialisation, masking and data order vary).
Runs the real commands (trainer pretrain / finetune / evaluate) exactly as trainer/demo.py does,
at its "bench" scale (4000 instead of 3000 poses, 1400 fine-tuning steps instead of 900), two training jobs
at a time (trainer.demo.run_jobs).

    python -m bench.uda_synthetic [--quick] [--seeds 0,1,2] [--out DIR]

--quick: Scratch, MAE and Ours, one seed, at the demo's scale (the runs `make demo` makes). Writes
bench/results/uda_synthetic.json (--quick: bench/results/quick/, git-ignored): per method
`source_epe_mm` and `target_epe_mm` (one value per seed), the same for `mean_pose`, per-seed
metrics, mean/std, wall time, and `ratios` (constant EPE / method EPE per split: above 1 means
better than the constant; and Scratch EPE / method EPE on the target: above 1 means better than
training from scratch).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench.results import write_results
from trainer.demo import (CONSTANT, DEMO_METHODS, METHODS, SCALES, epe_by_split, evaluate, method_jobs,
                          prepare_data, run_jobs, short_name)


def steps(run_dir: Path) -> int | None:
    """Optimizer steps of a fine-tuning run (its last metrics.jsonl line with a step)."""
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return max((l["step"] for l in lines if isinstance(l.get("step"), int)), default=None)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="Scratch, MAE and Ours, one seed, the demo's scale (make demo)")
    ap.add_argument("--seeds", default=None, help="comma list (default 0,1,2; --quick: 0)")
    ap.add_argument("--out", type=Path, default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--parallel", type=int, default=2, help="training jobs at a time (trainer.demo.run_jobs)")
    args = ap.parse_args()
    scale_name = "demo" if args.quick else "bench"
    scale = SCALES[scale_name]
    methods = DEMO_METHODS if args.quick else tuple(METHODS)
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    out = args.out or Path(tempfile.mkdtemp(prefix="uda_synthetic_"))
    out.mkdir(parents=True, exist_ok=True)
    log = out / "commands.log"
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    data = prepare_data(out, scale, 0, log, times)
    jobs, finetuned = [], {}
    for seed in seeds:     # one job graph over every seed: run_jobs keeps both cores busy throughout
        seed_jobs, finetuned[seed] = method_jobs(data, methods, out / f"seed{seed}", scale, seed, prefix=f"seed{seed}/")
        jobs += seed_jobs
    times.update(run_jobs(jobs, log, args.parallel))
    per_seed = {}
    for seed in seeds:
        results = evaluate(finetuned[seed], [data.source_test, data.target_test], out / f"seed{seed}" / "results", log)
        per_seed[seed] = epe_by_split(results, data)
        print(f"seed {seed}: " + ", ".join(f"{m} {r['source_epe_mm']:.1f}/{r['target_epe_mm']:.1f}"
                                           for m, r in per_seed[seed].items()) + " (source/target EPE mm)", flush=True)

    def series(method, key):
        return [per_seed[s][method][key] for s in seeds]

    table = {}
    for method in (CONSTANT, *methods):
        row = {"source_epe_mm": series(method, "source_epe_mm"), "target_epe_mm": series(method, "target_epe_mm"),
               "target_auc_20_50": series(method, "target_auc_20_50")}
        for key in ("source_epe_mm", "target_epe_mm"):
            row[key + "_mean"] = statistics.fmean(row[key])
            row[key + "_std"] = statistics.pstdev(row[key])
        table[method] = row
    constant = table[CONSTANT]
    ratios = {}
    for method in methods:
        row = table[method]
        ratios[f"constant_over_{short_name(method)}_source_epe"] = constant["source_epe_mm_mean"] / row["source_epe_mm_mean"]
        ratios[f"constant_over_{short_name(method)}_target_epe"] = constant["target_epe_mm_mean"] / row["target_epe_mm_mean"]
        if method != "Scratch":
            ratios[f"scratch_over_{short_name(method)}_target_epe"] = (table["Scratch"]["target_epe_mm_mean"]
                                                                  / row["target_epe_mm_mean"])
    seconds = time.perf_counter() - t0
    print(f"\nEPE (mm, root-relative at the wrist) over seeds {seeds}, {'quick' if args.quick else 'full'} run, "
          f"{seconds / 60:.1f} min")
    print("| method | source test | target test | target / source | target per seed |\n|:---|---:|---:|---:|:---|")
    for method, row in table.items():
        print(f"| {method} | {row['source_epe_mm_mean']:.1f} ± {row['source_epe_mm_std']:.1f} "
              f"| {row['target_epe_mm_mean']:.1f} ± {row['target_epe_mm_std']:.1f} "
              f"| {row['target_epe_mm_mean'] / row['source_epe_mm_mean']:.2f} "
              f"| {' '.join(f'{v:.1f}' for v in row['target_epe_mm'])} |")
    doc = {"run": "quick" if args.quick else "full", "scale_name": scale_name, "scale": scale.__dict__, "seeds": seeds,
           "parallel": args.parallel, "finetune_steps": steps(finetuned[seeds[0]]["Scratch"]),
           "mean_pose": {k: table[CONSTANT][k] for k in ("source_epe_mm", "target_epe_mm")},
           "methods": {m: {k: table[m][k] for k in ("source_epe_mm", "target_epe_mm", "target_auc_20_50")}
                       for m in methods},
           "summary": table, "per_seed": per_seed, "ratios": ratios, "seconds": seconds, "step_seconds": times,
           "work_dir": str(out)}
    print(f"wrote {write_results('uda_synthetic', args.quick, doc, default=list)} ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
