"""Pose model, frozen attention network, attention regulariser and pre-trained loading
(trainer.pose)."""
import pytest
import torch

import deepspeed
from shards.device import ensure_distributed_env
from trainer.heatmaps import pose_loss
from trainer.mae import MaskedAutoencoder
from trainer.pose import (LAMBDA_AR, CheckpointError, FrozenAttentionNet, PoseModel, attention_regularisation,
                          finetune_loss, load_pretrained, read_module_state_dict)
from trainer.unet import UNet
from trainer.vit import vit_config

ENCODER = dict(img_size=64, patch_size=16, embed_dim=64, depth=3, num_heads=4)


def test_pose_model_shapes():
    torch.manual_seed(0)
    model = PoseModel(ENCODER, num_joints=5, depth_bins=8)
    heatmaps, attn = model.forward_with_cls_attention(torch.randn(2, 3, 64, 64))
    assert heatmaps.shape == (2, 5, 8, 16, 16)           # input / 4
    assert attn.shape == (2, 3, 16)
    wide = PoseModel(dict(ENCODER, img_size=(64, 96)), num_joints=2, depth_bins=4)
    assert wide(torch.randn(1, 3, 64, 96)).shape == (1, 2, 4, 16, 24)


def test_paper_pose_model_parameter_counts():
    with torch.device("meta"):
        hand = PoseModel(vit_config("base"), num_joints=21, depth_bins=64)
    head = sum(p.numel() for p in hand.head.parameters())
    # deconv 768->256 (no bias), BN, deconv 256->256, BN, 1x1 conv 256 -> 21*64 (with bias)
    assert head == 768 * 256 * 16 + 512 + 256 * 256 * 16 + 512 + 256 * 21 * 64 + 21 * 64
    assert 85e6 < sum(p.numel() for p in hand.encoder.parameters()) < 87e6


def finetune_step_loss(model, frozen, source, target, lambda_ar=LAMBDA_AR["hand"]):
    heatmaps = model(source)
    uvz = torch.tensor([[[3.0, 4.0, 2.0], [10.0, 12.0, 5.0]]]).expand(source.shape[0], -1, -1)
    l_pose = pose_loss(heatmaps, uvz, torch.ones(source.shape[0], 2, dtype=torch.bool))
    l_ar = attention_regularisation(model.cls_attention(target), frozen(target))
    return finetune_loss(l_pose, l_ar, lambda_ar), l_ar


def test_gradient_reaches_every_trainable_parameter_and_never_the_frozen_copy():
    torch.manual_seed(1)
    model = PoseModel(dict(ENCODER, drop_path_rate=0.1), num_joints=2, depth_bins=8)
    frozen = FrozenAttentionNet(model.encoder)
    frozen.train()                                   # a caller's train() must not unfreeze it
    assert not frozen.training and not frozen.encoder.training
    assert all(not p.requires_grad for p in frozen.parameters())
    frozen_before = {k: v.clone() for k, v in frozen.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    source, target = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    loss, l_ar = finetune_step_loss(model, frozen, source, target)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert no_grad == []
    assert all(p.grad is None for p in frozen.parameters())
    optimizer.step()
    assert all(torch.equal(frozen.state_dict()[k], v) for k, v in frozen_before.items())
    assert not torch.equal(model.encoder.cls_token, frozen.encoder.cls_token)
    # The regulariser pulls E's maps back toward A's: its gradient is non-zero once they differ.
    model.eval()
    assert attention_regularisation(model.cls_attention(target), frozen(target)).item() > 0


def test_attention_regulariser_zero_for_identical_networks_and_gradient_flows():
    torch.manual_seed(2)
    model = PoseModel(ENCODER, num_joints=2, depth_bins=4)
    frozen = FrozenAttentionNet(model.encoder)
    target = torch.randn(3, 3, 64, 64)
    maps = model.cls_attention(target)
    assert attention_regularisation(maps, frozen(target)).item() == 0.0
    assert maps.requires_grad and not frozen(target).requires_grad


def test_attention_regulariser_reductions_known_values():
    maps = torch.zeros(2, 3, 4)
    frozen = torch.zeros(2, 3, 4)
    maps[0, 0] = torch.tensor([1.0, 2.0, 0.0, 0.0])     # squared L2 5 in one block of one sample
    maps[1, 2] = torch.tensor([0.0, 0.0, 0.0, 1.0])     # 1 in another
    assert attention_regularisation(maps, frozen).item() == pytest.approx(6 / 6)          # mean over 2x3
    assert attention_regularisation(maps, frozen, "mean").item() == pytest.approx(6 / 24)
    assert attention_regularisation(maps, frozen, "none").tolist() == [[5, 0, 0], [0, 0, 1]]
    with pytest.raises(ValueError, match="reduction"):
        attention_regularisation(maps, frozen, "max")
    with pytest.raises(ValueError, match="differ"):
        attention_regularisation(maps, frozen[:, :2])
    assert finetune_loss(torch.tensor(0.5), torch.tensor(0.01), LAMBDA_AR["hand"]).item() == pytest.approx(1.5)
    assert finetune_loss(torch.tensor(0.5), torch.tensor(0.01), LAMBDA_AR["body"]).item() == pytest.approx(0.6)
    assert finetune_loss(torch.tensor(0.5), None, 100.0).item() == 0.5


def test_layer_decay_scales_follow_vitpose():
    from timm.optim import param_groups_layer_decay
    model = PoseModel(ENCODER, num_joints=2, depth_bins=4)
    names = {id(p): n for n, p in model.named_parameters()}
    scale = {names[id(p)]: g["lr_scale"] for g in param_groups_layer_decay(model, layer_decay=0.75)
             for p in g["params"]}
    assert scale["encoder.patch_embed.proj.weight"] == pytest.approx(0.75 ** 4)
    assert scale["encoder.cls_token"] == pytest.approx(0.75 ** 4)
    assert scale["encoder.blocks.0.attn.qkv.weight"] == pytest.approx(0.75 ** 3)
    assert scale["encoder.blocks.2.attn.qkv.weight"] == pytest.approx(0.75)
    assert scale["encoder.norm.weight"] == scale["head.6.weight"] == 1.0


def deepspeed_checkpoint(model, directory, tag="step3"):
    """Save `model` the way the pre-training stage does: a DeepSpeed engine checkpoint."""
    ensure_distributed_env()
    config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
              "zero_optimization": {"stage": 1}, "gradient_clipping": 1.0}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    engine.save_checkpoint(str(directory), tag=tag)
    return engine


def test_load_pretrained_from_deepspeed_mae_checkpoint(tmp_path):
    torch.manual_seed(3)
    mae = MaskedAutoencoder(**ENCODER, decoder_embed_dim=32, decoder_num_heads=4)
    deepspeed_checkpoint(mae, tmp_path / "pre")
    model = PoseModel(ENCODER, num_joints=2, depth_bins=4)
    frozen = FrozenAttentionNet(model.encoder)
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    report = load_pretrained(model, tmp_path / "pre", frozen=frozen)
    for source in (model.encoder, frozen.encoder):
        for k, v in mae.encoder.state_dict().items():
            assert torch.equal(source.state_dict()[k], v), k
    assert all(torch.equal(model.head.state_dict()[k], v) for k, v in head_before.items())
    assert report.missing == [] and report.unexpected == []
    assert len(report.loaded) == len(mae.encoder.state_dict())
    assert "mask_token" in report.ignored and "decoder_pred.weight" in report.ignored
    assert f"loaded {len(report.loaded)} encoder tensors" in str(report)
    # A tag directory and a plain torch.save'd state dict load the same.
    assert read_module_state_dict(tmp_path / "pre" / "step3").keys() == mae.state_dict().keys()
    torch.save(mae.state_dict(), tmp_path / "mae.pt")
    assert len(load_pretrained(PoseModel(ENCODER, 2, 4), tmp_path / "mae.pt").loaded) == len(report.loaded)


def test_load_pretrained_rejects_wrong_models(tmp_path):
    torch.manual_seed(4)
    model = PoseModel(ENCODER, num_joints=2, depth_bins=4)
    wider = MaskedAutoencoder(**dict(ENCODER, embed_dim=96, num_heads=4), decoder_embed_dim=32, decoder_num_heads=4)
    torch.save(wider.state_dict(), tmp_path / "wider.pt")
    with pytest.raises(CheckpointError, match=r"wider\.pt.*width 96, 3 blocks; model: width 64, 3 blocks.*shape"):
        load_pretrained(model, tmp_path / "wider.pt")
    deeper = MaskedAutoencoder(**dict(ENCODER, depth=4), decoder_embed_dim=32, decoder_num_heads=4)
    torch.save({"module": deeper.state_dict()}, tmp_path / "deeper.pt")
    with pytest.raises(CheckpointError, match=r"deeper\.pt.*does not have: blocks\.3\."):
        load_pretrained(model, tmp_path / "deeper.pt")
    shallower = MaskedAutoencoder(**dict(ENCODER, depth=2), decoder_embed_dim=32, decoder_num_heads=4)
    torch.save(shallower.state_dict(), tmp_path / "shallower.pt")
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint: encoder\.blocks\.2\."):
        load_pretrained(model, tmp_path / "shallower.pt")
    report = load_pretrained(model, tmp_path / "shallower.pt", allow_missing=True)
    assert report.missing and all(k.startswith("encoder.blocks.2.") for k in report.missing)
    torch.save(UNet(base=4).state_dict(), tmp_path / "segnet.pt")
    with pytest.raises(CheckpointError, match=r"segnet\.pt has no 'encoder\.\*' weights"):
        load_pretrained(model, tmp_path / "segnet.pt")
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        load_pretrained(model, tmp_path / "absent")
