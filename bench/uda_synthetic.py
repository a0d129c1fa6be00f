"""Does the method help on a synthetic domain gap? The paper's ablations on the demo generator.

Source: procedural hands in FreiHAND's layout (studio look). Target: procedural hands in RHD's
layout (other skin, lighting, clutter, hand shapes, both sides). Every method fine-tunes on
labelled source only and is scored on the labelled target test split:
  Scratch, MAE, w/o BG (no background replacement), w/o FCR, w/o AR, Ours (FCR + BG + AR),
each over several seeds (the data is the same; initialisation, masking and data order vary).
Runs the real commands (trainer pretrain / finetune / evaluate) exactly as trainer/demo.py does.

    python -m bench.uda_synthetic [--quick] [--seeds 0,1,2] [--out DIR]

Writes bench/results/uda_synthetic.json: per-seed metrics, mean/std per method, and `ratios`
(Scratch EPE / method EPE: above 1 means better than training from scratch).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from trainer.demo import METHODS, PRETRAIN_VARIANTS, DemoScale, evaluate, finetune, prepare_data, pretrain

RESULTS = Path(__file__).parent / "results" / "uda_synthetic.json"
SCALES = {
    "quick": DemoScale(source=24, target_train=48, target_test=32, pretrain_epochs=1, finetune_epochs=1, segnet_epochs=2),
    # the demo's data; about 14 minutes per seed on 2 CPU cores
    "full": DemoScale(source=160, target_train=400, target_test=200, pretrain_epochs=4, finetune_epochs=4),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny data, 1 epoch, one seed: checks it runs (1-2 min)")
    ap.add_argument("--seeds", default=None, help="comma list (default 0,1,2; --quick: 0)")
    ap.add_argument("--out", type=Path, default=None, help="work directory (default: a temporary one)")
    args = ap.parse_args()
    scale_name = "quick" if args.quick else "full"
    scale = SCALES[scale_name]
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    out = args.out or Path(tempfile.mkdtemp(prefix="uda_synthetic_"))
    out.mkdir(parents=True, exist_ok=True)
    log = out / "commands.log"
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    data = prepare_data(out, scale, 0, log, times)
    per_seed = {}
    for seed in seeds:
        runs = out / f"seed{seed}"
        for variant in PRETRAIN_VARIANTS:
            times[f"seed{seed}/pretrain_{variant}"] = pretrain(data, variant, runs / f"pretrain_{variant}", scale, seed, log)
        finetuned = {}
        for i, (method, (variant, _)) in enumerate(METHODS.items()):
            run_dir = runs / f"ft_{i}"
            init = runs / f"pretrain_{variant}" if variant else None
            times[f"seed{seed}/ft_{method}"] = finetune(data, method, init, run_dir, scale, seed, log)
            finetuned[method] = run_dir
        results = evaluate(finetuned, data.target_test, runs / "results", log)
        per_seed[seed] = {e["method"]: {k: e["metrics"][k] for k in ("epe", "pa_epe", "auc_20_50", "num_samples")}
                          for e in results["evaluations"]}
    summary = {}
    for method in METHODS:
        epes = [per_seed[s][method]["epe"] for s in seeds]
        aucs = [per_seed[s][method]["auc_20_50"] for s in seeds]
        summary[method] = {"epe_mean": statistics.fmean(epes), "epe_std": statistics.pstdev(epes),
                           "auc_mean": statistics.fmean(aucs), "epe_per_seed": epes}
    scratch = summary["Scratch"]["epe_mean"]
    ratios = {f"scratch_epe_over_{m.split(' (')[0].replace('/', '').replace(' ', '_').lower()}_epe": scratch / v["epe_mean"]
              for m, v in summary.items() if m != "Scratch"}
    print(f"\ntarget test EPE over seeds {seeds} ({scale_name} scale: {scale})")
    print(f"{'method':18} {'EPE mean':>9} {'std':>6} {'AUC 20-50':>9}  per seed")
    for method, v in summary.items():
        print(f"{method:18} {v['epe_mean']:>9.2f} {v['epe_std']:>6.2f} {v['auc_mean']:>9.3f}  "
              + " ".join(f"{e:.1f}" for e in v["epe_per_seed"]))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"scale": scale_name, "scale_settings": scale.__dict__, "seeds": seeds,
                                   "per_seed": per_seed, "summary": summary, "ratios": ratios,
                                   "seconds": time.perf_counter() - t0, "step_seconds": times,
                                   "work_dir": str(out)}, indent=1))
    print(f"wrote {RESULTS} ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
