"""Helpers for the stages' step and figure functions: inputs in the engine's dtype, images back
to uint8, a grid of tiles."""
from __future__ import annotations

import numpy as np
import torch


def model_inputs(engine, images: torch.Tensor) -> torch.Tensor:
    """Images onto the engine's device in its parameters' dtype (bf16 engines hold bf16 weights)."""
    return images.to(engine.device, next(engine.module.parameters()).dtype, non_blocking=True)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Normalised (B, 3, H, W) images, as the pipelines make them, -> (B, H, W, 3) uint8 RGB."""
    from shards.pipelines.augment import IMAGENET_MEAN, IMAGENET_STD
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x = images.detach().float().cpu() * std + mean
    return (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def image_grid(rows: list[list], gap: int = 2):
    """A PIL image of rows of equally sized tiles (HxWx3 uint8 arrays or PIL images)."""
    from PIL import Image
    tiles = [[np.asarray(t.convert("RGB") if isinstance(t, Image.Image) else t) for t in row] for row in rows]
    h, w = tiles[0][0].shape[:2]
    cols = max(len(r) for r in tiles)
    canvas = np.full((len(tiles) * (h + gap) - gap, cols * (w + gap) - gap, 3), 255, np.uint8)
    for i, row in enumerate(tiles):
        for j, tile in enumerate(row):
            canvas[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = tile
    return Image.fromarray(canvas)
