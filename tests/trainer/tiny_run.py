"""A real, tiny fine-tuning run for the tests of what comes after training (export, predict):
`trainer finetune` through its click command, the DALI CPU pipeline and a DeepSpeed engine,
ViT-Tiny at 32 px, one optimizer step from scratch on 12 synthetic source hands."""
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from tests.shards.synthetic import blob_mask, hand_sample, smooth_image, write_shards
from trainer.cli import cli

STORED = 48   # stored crop side
SIZE = 32     # network input side
DEPTH_BINS = 8
TINY = ["--model", "tiny", "--input-size", str(SIZE)]


def source_shards(root: Path, count: int = 12) -> Path:
    rng = np.random.default_rng(0)
    samples = []
    for i in range(count):
        mask = blob_mask(STORED, rng)
        background = (smooth_image(STORED, 100 + i) * 0.5).astype(np.uint8)
        image = np.where(mask[..., None] > 0, np.uint8([230, 180, 150]), background).astype(np.uint8)
        samples.append(hand_sample(f"src{i:04d}", i, STORED, image=image, mask=mask))
    return write_shards(root / "source", samples, per_shard=6)


def finetune_run(root: Path) -> Path:
    """The run directory of one fine-tuning step (scratch, source only)."""
    run_dir = root / "ft"
    result = CliRunner().invoke(cli, [str(a) for a in (
        "finetune", "--source", source_shards(root), "--init", "none", "--source-only", *TINY,
        "--depth-bins", DEPTH_BINS, "--head-channels", 16, "--max-steps", 1, "--log-every", 1,
        "--figure-every", 0, "--run-dir", run_dir)], catch_exceptions=False)
    assert result.exit_code == 0, result.output[-3000:]
    return run_dir
