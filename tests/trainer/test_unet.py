"""Segmentation U-Net (trainer.unet): architecture, loss, a short real training run, prediction."""
import math

import pytest
import torch

from trainer.unet import UNet, mask_iou, predict_masks, segnet_loss, segnet_step


def double_conv_params(a, b):
    return a * b * 9 + b + b * b * 9 + b


def test_unet_architecture_and_parameter_count():
    with torch.device("meta"):
        net = UNet(in_ch=3, base=64)
    w = [64, 128, 256, 512, 1024]
    expected = 3 * 64 * 9 + 2 * 64                                    # stem conv (no bias) + BN
    expected += double_conv_params(64, 64) + sum(double_conv_params(w[i - 1], w[i]) for i in range(1, 5))
    expected += sum(double_conv_params(w[i + 1] + w[i], w[i]) for i in range(4))
    expected += double_conv_params(64, 64) + 64 + 1                   # last convs, 1x1 to one channel
    assert sum(p.numel() for p in net.parameters()) == expected
    small = UNet(base=4)
    assert small(torch.randn(2, 3, 64, 96)).shape == (2, 1, 64, 96)
    with pytest.raises(ValueError, match="multiple of 32"):
        small(torch.randn(1, 3, 48, 64))


def test_segnet_loss_known_values():
    logits = torch.zeros(1, 1, 4, 4)
    assert segnet_loss(logits, torch.ones(1, 1, 4, 4)).item() == pytest.approx(math.log(2))
    confident = torch.full((1, 1, 4, 4), 20.0)
    assert segnet_loss(confident, torch.ones(1, 1, 4, 4)).item() == pytest.approx(math.log1p(math.exp(-20)))
    with pytest.raises(ValueError, match="differ"):
        segnet_loss(logits, torch.ones(1, 1, 4, 5))


def test_segnet_learns_a_mask_and_predicts_any_size():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 32, 32, generator=g) * 0.2
    masks = torch.zeros(4, 1, 32, 32)
    for i, (y, x) in enumerate([(4, 4), (10, 16), (16, 2), (8, 8)]):   # bright squares are foreground
        images[i, :, y:y + 12, x:x + 12] += 1.0
        masks[i, :, y:y + 12, x:x + 12] = 1.0
    net = UNet(base=8)   # the table's net has BN only in the stem: slow start, fixed seed
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    first = None
    for _ in range(100):
        loss = segnet_step(net, images, masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.15 * first
    net.train()
    probs = predict_masks(net, images)
    assert net.training                                  # mode restored
    assert probs.shape == (4, 1, 32, 32) and probs.min() >= 0 and probs.max() <= 1
    assert mask_iou(probs, masks).min().item() > 0.7
    odd = predict_masks(net, torch.randn(3, 3, 40, 50), batch_size=2)  # padded to 64 x 64, cropped back
    assert odd.shape == (3, 1, 40, 50)


def test_mask_iou_known_values():
    pred = torch.zeros(3, 1, 2, 2)
    target = torch.zeros(3, 1, 2, 2)
    pred[0, 0, 0] = 1.0             # two pixels predicted
    target[0, 0, 0, 0] = 1.0        # one of them right: IoU 1/2
    pred[1, 0, 0, 0] = 0.9
    target[1, 0, 1, 1] = 1.0        # disjoint: 0
    assert mask_iou(pred, target).tolist() == [0.5, 0.0, 1.0]   # both empty: 1
