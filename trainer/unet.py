"""Segmentation network S (docs/method.md Stage 0, paper Table 6): a U-Net predicting one foreground
channel, trained with binary cross-entropy on source masks, used to predict the target masks.

Table 6 as we read it (its kernel sizes and widths were lost in extraction, and its Concat
indices are garbled; we concatenate each up stage with the encoder output of the same
resolution, the U-Net rule, and use base * 2^i channels as Ronneberger et al.):
    stem       Conv 3x3 stride 2 + BN + ReLU                           H/2,  base
    down 0..4  [Conv 3x3 + ReLU] x 2, MaxPool 2 between stages         H/2 .. H/32, base .. 16*base
    up 3..0    Upsample x2 (bilinear), concat skip, [Conv 3x3 + ReLU] x 2   H/16 .. H/2
    out        Upsample x2 to H, [Conv 3x3 + ReLU] x 2, Conv 1x1 (+ sigmoid)
Five upsamplings undo the stride-2 stem and the four poolings, so the table's 36 layers line up.
The forward returns logits (sigmoid applied in the loss, stably, and in predict_masks).

Public API
    UNet(in_ch=3, base=64)         .forward(images (B,in_ch,H,W)) -> logits (B,1,H,W); H, W % 32 == 0
    segnet_loss(logits, mask (B,1,H,W) in [0,1]) -> scalar BCE
    segnet_step(model, images, masks) -> loss       forward + loss of one training step
    predict_masks(model, images, batch_size=None) -> (B,1,H,W) float in [0,1]   any H, W
    mask_iou(pred (B,1,H,W), target, threshold=0.5) -> (B,) IoU of the binarised masks
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DOWNSAMPLING = 32  # stride-2 stem and four 2x poolings


def double_conv(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(out_ch, out_ch, 3, padding=1), nn.ReLU(inplace=True))


class UNet(nn.Module):
    def __init__(self, in_ch: int = 3, base: int = 64):
        super().__init__()
        widths = [base * 2 ** i for i in range(5)]  # 64, 128, 256, 512, 1024
        self.stem = nn.Sequential(nn.Conv2d(in_ch, base, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(base), nn.ReLU(inplace=True))
        self.down = nn.ModuleList([double_conv(widths[0], widths[0])] +
                                  [double_conv(widths[i - 1], widths[i]) for i in range(1, 5)])
        self.up = nn.ModuleList([double_conv(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(4))])
        self.out = nn.Sequential(double_conv(widths[0], base), nn.Conv2d(base, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        H, W = images.shape[-2:]
        if H % DOWNSAMPLING or W % DOWNSAMPLING:
            raise ValueError(f"UNet input {H}x{W} must be a multiple of {DOWNSAMPLING} (predict_masks pads)")
        x = self.stem(images)
        skips = []
        for i, stage in enumerate(self.down):
            x = stage(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for stage in self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = stage(torch.cat([skips.pop(), x], dim=1))
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.out(x)


def segnet_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy against a (soft) mask in [0, 1], on logits for numerical stability."""
    if logits.shape != mask.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and mask {tuple(mask.shape)} differ")
    return F.binary_cross_entropy_with_logits(logits.float(), mask.float())


def segnet_step(model: nn.Module, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The loss of one training step (the DeepSpeed engine does backward and step)."""
    return segnet_loss(model(images), masks)


@torch.no_grad()
def predict_masks(model: nn.Module, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """Foreground probabilities (B, 1, H, W) in [0, 1] for images of any size: padded (edge
    replicated) to a multiple of 32, cropped back. Runs in eval mode and restores the mode."""
    H, W = images.shape[-2:]
    pad_h, pad_w = -H % DOWNSAMPLING, -W % DOWNSAMPLING
    was_training = model.training
    model.eval()
    try:
        chunks = images.split(batch_size or images.shape[0])
        out = []
        for chunk in chunks:
            if pad_h or pad_w:
                chunk = F.pad(chunk, (0, pad_w, 0, pad_h), mode="replicate")
            out.append(torch.sigmoid(model(chunk).float())[..., :H, :W])
        return torch.cat(out)
    finally:
        model.train(was_training)


def mask_iou(pred: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Per-sample IoU of pred > threshold and target > threshold; 1 where both are empty."""
    p, t = (pred > threshold).flatten(1), (target > threshold).flatten(1)
    intersection = (p & t).sum(1).float()
    union = (p | t).sum(1).float()
    return torch.where(union > 0, intersection / union.clamp_min(1), torch.ones_like(union))
