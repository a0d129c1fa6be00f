"""Released checkpoints as initialisation (trainer.official_weights, trainer.pose loaders):
small files written here in the exact key layouts of Facebook's MAE releases, timm's MAE ViTs and
ViTPose (mmpose), at tiny widths; then the weights that arrive are compared with the file's, and
the stages run from them for real (trainer pretrain --init, trainer finetune --init)."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tests.trainer.tiny_run import SIZE, TINY, source_shards
from trainer.cli import cli
from trainer.mae import MaskedAutoencoder
from trainer.official_weights import encoder_overrides, infer_grid, read_checkpoint
from trainer.pose import CheckpointError, FrozenAttentionNet, PoseModel, load_mae_init, load_pretrained

WIDTH, DEPTH, HEADS, PATCH = 32, 2, 4, 16
ENCODER = dict(img_size=64, patch_size=PATCH, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS)   # a 4x4 grid
CKPT_GRID = (3, 3)          # the "224 px" of these tiny checkpoints: 48 px, 3x3 patches
DEC_WIDTH, DEC_DEPTH = 16, 2


def mae_sincos(dim: int, gh: int, gw: int) -> np.ndarray:
    """MAE's get_2d_sincos_pos_embed, written out from its definition (independent of
    trainer.vit): half the channels encode the column (MAE's meshgrid puts w first), half the
    row, each [sin(p w_i), cos(p w_i)], w_i = 1 / 10000^(i / (dim/4)); a zero class slot."""
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
    rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")

    def axis(p):
        out = np.outer(p.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid = np.concatenate([axis(cols), axis(rows)], axis=1)
    return np.concatenate([np.zeros((1, dim)), grid]).astype(np.float32)[None]


def rand(gen, *shape):
    return torch.randn(*shape, generator=gen) * 0.05


def block_tensors(prefix: str, dim: int, gen) -> dict:
    """One transformer block in the released key names (timm / MAE / ViTPose share them)."""
    shapes = {"norm1.weight": (dim,), "norm1.bias": (dim,), "attn.qkv.weight": (3 * dim, dim), "attn.qkv.bias": (3 * dim,),
              "attn.proj.weight": (dim, dim), "attn.proj.bias": (dim,), "norm2.weight": (dim,), "norm2.bias": (dim,),
              "mlp.fc1.weight": (4 * dim, dim), "mlp.fc1.bias": (4 * dim,), "mlp.fc2.weight": (dim, 4 * dim),
              "mlp.fc2.bias": (dim,)}
    return {f"{prefix}{k}": rand(gen, *s) + (1.0 if k.startswith("norm") and k.endswith("weight") else 0.0)
            for k, s in shapes.items()}


def mae_encoder(seed=0, width=WIDTH, depth=DEPTH, grid=CKPT_GRID) -> dict:
    """mae_pretrain_vit_base.pth's model dict (and timm's vit_*.mae state dict), tiny."""
    gen = torch.Generator().manual_seed(seed)
    state = {"cls_token": rand(gen, 1, 1, width),
             "pos_embed": torch.from_numpy(mae_sincos(width, *grid)),
             "patch_embed.proj.weight": rand(gen, width, 3, PATCH, PATCH), "patch_embed.proj.bias": rand(gen, width)}
    for i in range(depth):
        state |= block_tensors(f"blocks.{i}.", width, gen)
    state |= {"norm.weight": 1 + rand(gen, width), "norm.bias": rand(gen, width)}
    return state


def mae_full(seed=0, dec_depth=DEC_DEPTH) -> dict:
    """mae_pretrain_vit_base_full.pth / mae_visualize_vit_base.pth: the encoder plus the decoder."""
    gen = torch.Generator().manual_seed(seed + 100)
    state = mae_encoder(seed) | {
        "mask_token": rand(gen, 1, 1, DEC_WIDTH),
        "decoder_embed.weight": rand(gen, DEC_WIDTH, WIDTH), "decoder_embed.bias": rand(gen, DEC_WIDTH),
        "decoder_pos_embed": torch.from_numpy(mae_sincos(DEC_WIDTH, *CKPT_GRID))}
    for i in range(dec_depth):
        state |= block_tensors(f"decoder_blocks.{i}.", DEC_WIDTH, gen)
    state |= {"decoder_norm.weight": 1 + rand(gen, DEC_WIDTH), "decoder_norm.bias": rand(gen, DEC_WIDTH),
              "decoder_pred.weight": rand(gen, PATCH * PATCH * 3, DEC_WIDTH), "decoder_pred.bias": rand(gen, PATCH * PATCH * 3)}
    return state


def vitpose(seed=0, width=WIDTH, depth=DEPTH, grid=(4, 3), joints=17) -> dict:
    """ViTPose's mmpose checkpoint: {"state_dict": backbone.* + keypoint_head.*}; no class token,
    a learned pos_embed of 1 + N slots, last_norm; grid 4x3 is ViTPose's 256x192 at tiny scale."""
    gen = torch.Generator().manual_seed(seed + 200)
    n = grid[0] * grid[1]
    backbone = {"pos_embed": torch.randn(1, 1 + n, width, generator=gen) * 0.5,
                "patch_embed.proj.weight": rand(gen, width, 3, PATCH, PATCH), "patch_embed.proj.bias": rand(gen, width)}
    for i in range(depth):
        backbone |= block_tensors(f"blocks.{i}.", width, gen)
    backbone |= {"last_norm.weight": 1 + rand(gen, width), "last_norm.bias": rand(gen, width)}
    head = {"keypoint_head.deconv_layers.0.weight": rand(gen, width, 8, 4, 4),
            "keypoint_head.deconv_layers.1.weight": 1 + rand(gen, 8), "keypoint_head.deconv_layers.1.bias": rand(gen, 8),
            "keypoint_head.final_layer.weight": rand(gen, joints, 8, 1, 1), "keypoint_head.final_layer.bias": rand(gen, joints)}
    return {"state_dict": {f"backbone.{k}": v for k, v in backbone.items()} | head, "meta": {"epoch": 210}}


def assert_encoder_is(encoder, released: dict, rename=lambda k: k, skip=("pos_embed",)):
    """Every released encoder tensor arrived unchanged, under our name."""
    ours = encoder.state_dict()
    checked = 0
    for key, value in released.items():
        if key in skip:
            continue
        assert torch.equal(ours[rename(key)], value), key
        checked += 1
    assert checked == len([k for k in ours if k != "pos_embed"]) - (0 if "cls_token" in released else 1)


# -- MAE and timm ---------------------------------------------------------------------------------
def test_test_sincos_is_maes_layout():
    """The reference above and trainer.vit's fixed embedding agree (so 'is sin-cos' means MAE's)."""
    from trainer.vit import sincos_pos_embed_2d
    assert np.allclose(mae_sincos(WIDTH, 4, 3)[0], sincos_pos_embed_2d(WIDTH, (4, 3)).numpy(), atol=1e-6)


def test_mae_release_initialises_the_pose_encoder(tmp_path):
    from timm.models.vision_transformer import VisionTransformer
    released = mae_encoder()
    torch.save({"model": released}, tmp_path / "mae_pretrain_vit_base.pth")
    model = PoseModel(ENCODER, num_joints=2, depth_bins=4)
    frozen = FrozenAttentionNet(model.encoder)
    report = load_pretrained(model, tmp_path / "mae_pretrain_vit_base.pth", frozen=frozen)
    assert report.format == "mae" and report.missing == [] and report.unexpected == []
    assert report.position.startswith("fixed 2D sin-cos, unchanged") and "3x3" in report.position and "4x4" in report.position
    assert "[mae]" in str(report) and "position embedding: fixed 2D sin-cos" in str(report)
    assert_encoder_is(model.encoder, released)
    assert_encoder_is(frozen.encoder, released)
    # What arrived computes what MAE's encoder computes at 64 px: timm's ViT (MAE's own building
    # blocks) with the released weights and MAE's sin-cos for a 4x4 grid.
    reference = VisionTransformer(img_size=64, patch_size=PATCH, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS,
                                  num_classes=0, global_pool="").eval()
    reference.load_state_dict(released | {"pos_embed": torch.from_numpy(mae_sincos(WIDTH, 4, 4))})
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model.encoder.eval()(x), reference.forward_features(x), atol=1e-5)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_mae_state_dict_pth_and_safetensors(tmp_path, suffix):
    from safetensors.torch import save_file
    released = mae_encoder(seed=1)
    path = tmp_path / f"vit_base_patch16_224.mae{suffix}"
    if suffix == ".pth":
        torch.save(released, path)
    else:
        save_file({k: v.contiguous() for k, v in released.items()}, str(path))
    model = PoseModel(ENCODER, num_joints=2, depth_bins=4)
    report = load_pretrained(model, path)
    assert report.format == "timm" and report.position.startswith("fixed 2D sin-cos, unchanged")
    assert_encoder_is(model.encoder, released)
    assert encoder_overrides(path) == {}   # sin-cos: the encoder keeps its fixed embedding


def test_pretrain_init_loads_the_decoder_of_a_full_mae_release(tmp_path):
    released = mae_full()
    torch.save({"model": released}, tmp_path / "mae_pretrain_vit_base_full.pth")
    mae = MaskedAutoencoder(**ENCODER, decoder_embed_dim=DEC_WIDTH, decoder_depth=DEC_DEPTH, decoder_num_heads=4)
    report = load_mae_init(mae, tmp_path / "mae_pretrain_vit_base_full.pth")
    assert report.format == "mae_full" and report.missing == [] and report.ignored == ["decoder_pos_embed"]
    state = mae.state_dict()
    for key, value in released.items():
        if key.endswith("pos_embed"):
            continue
        ours = key if key.startswith(("decoder_", "mask_token")) else f"encoder.{key}"
        assert torch.equal(state[ours], value), key
    assert len(report.loaded) == len(state)   # every tensor of the model came from the file
    assert "decoder loaded: width 16, 2 blocks" in str(report)

    one_block = MaskedAutoencoder(**ENCODER, decoder_embed_dim=DEC_WIDTH, decoder_depth=1, decoder_num_heads=4)
    with pytest.raises(CheckpointError, match=r"mae_pretrain_vit_base_full\.pth: its decoder \(width 16, 2 blocks\).*"
                                              r"--decoder-dim 16 --decoder-depth 2"):
        load_mae_init(one_block, tmp_path / "mae_pretrain_vit_base_full.pth")
    # the encoder-only release: the decoder starts from its initialisation, and the report says so
    torch.save({"model": mae_encoder()}, tmp_path / "mae_pretrain_vit_base.pth")
    report = load_mae_init(one_block, tmp_path / "mae_pretrain_vit_base.pth")
    assert "decoder_pred.weight" in report.missing and "decoder starts from its initialisation" in str(report)


# -- ViTPose ----------------------------------------------------------------------------------
def test_vitpose_backbone_with_its_learned_position_embedding(tmp_path):
    from timm.layers import resample_abs_pos_embed
    checkpoint = vitpose()
    torch.save(checkpoint, tmp_path / "vitpose_base_coco_256x192.pth")
    path = tmp_path / "vitpose_base_coco_256x192.pth"
    assert infer_grid(12) == (4, 3) and infer_grid(196) == (14, 14)
    assert encoder_overrides(path) == {"learned_pos_embed": True}
    backbone = {k[len("backbone."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("backbone.")}
    pos = backbone["pos_embed"]
    folded = torch.cat([torch.zeros_like(pos[:, :1]), pos[:, 1:] + pos[:, :1]], dim=1)

    # the encoder at ViTPose's own grid: slot 0 folded into every patch slot, nothing interpolated
    same = PoseModel(dict(ENCODER, img_size=(64, 48), learned_pos_embed=True), num_joints=2, depth_bins=4)
    cls_before = same.encoder.cls_token.detach().clone()
    report = load_pretrained(same, path)
    assert report.format == "vitpose" and report.position == "learned, loaded as is (4x3)"
    assert torch.equal(same.encoder.pos_embed.detach(), folded)
    assert_encoder_is(same.encoder, backbone, rename=lambda k: k.replace("last_norm.", "norm."))
    assert torch.equal(same.encoder.cls_token.detach(), cls_before)        # ViTPose has none
    assert report.missing == ["encoder.cls_token"] and "no class token" in str(report)
    assert sorted(report.ignored) == sorted(k for k in checkpoint["state_dict"] if k.startswith("keypoint_head."))
    assert "meta" not in str(report.unexpected)

    # a square model: bicubic resampling of the folded embedding, 4x3 -> 4x4
    square = PoseModel(dict(ENCODER, learned_pos_embed=True), num_joints=2, depth_bins=4)
    report = load_pretrained(square, path)
    assert report.position == "learned, interpolated (bicubic) from the checkpoint's 4x3 grid to 4x4"
    expected = resample_abs_pos_embed(folded, new_size=[4, 4], old_size=[4, 3], num_prefix_tokens=1)
    assert torch.allclose(square.encoder.pos_embed.detach(), expected) and expected.shape == (1, 17, WIDTH)
    # ViTPose's patch tokens are exactly ViTPose's: x + pos[1:] + pos[0], here in the 4x3 model
    x = torch.randn(1, 3, 64, 48, generator=torch.Generator().manual_seed(2))
    conv = torch.nn.functional.conv2d(x, backbone["patch_embed.proj.weight"], backbone["patch_embed.proj.bias"], stride=PATCH)
    with torch.no_grad():
        assert torch.allclose(same.encoder.embed_patches(x), conv.flatten(2).transpose(1, 2) + pos[:, 1:] + pos[:, :1],
                              atol=1e-6)

    # an encoder with the fixed sin-cos embedding refuses a learned one, naming the file and the way out
    with pytest.raises(CheckpointError, match=r"vitpose_base_coco_256x192\.pth has a learned position embedding"):
        load_pretrained(PoseModel(ENCODER, num_joints=2, depth_bins=4), path)


def test_wrong_width_and_missing_file_name_the_file(tmp_path):
    torch.save({"model": mae_encoder(width=48)}, tmp_path / "wide.pth")
    with pytest.raises(CheckpointError, match=r"wide\.pth does not fit this encoder \(checkpoint: width 48"):
        load_pretrained(PoseModel(ENCODER, num_joints=2, depth_bins=4), tmp_path / "wide.pth")
    with pytest.raises(CheckpointError, match=r"no checkpoint file at .*absent\.pth"):
        read_checkpoint(tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*junk\.pth"):
        read_checkpoint(tmp_path / "junk.pth")


# -- the stages, for real ------------------------------------------------------------------------
def tiny_vit_release(grid) -> dict:
    """A ViT-Tiny-width encoder (192 wide, 12 blocks, 3 heads), as the stages' --model tiny builds."""
    return mae_encoder(seed=5, width=192, depth=12, grid=grid)


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def run_ok(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output[-3000:]
    return result


def test_pretrain_and_finetune_stages_start_from_released_files(tmp_path):
    source = source_shards(tmp_path)
    # pretrain --init: a timm-layout MAE encoder (3x3 grid) into a 32 px (2x2) ViT-Tiny MAE
    released = tiny_vit_release(grid=(3, 3))
    torch.save({"model": released}, tmp_path / "mae_tiny.pth")
    run_ok("pretrain", "--source", source, "--no-backgrounds", *TINY, "--decoder-dim", 32, "--decoder-heads", 4,
           "--init", tmp_path / "mae_tiny.pth", "--epochs", 1, "--max-steps", 1, "--log-every", 1,
           "--figure-every", 0, "--run-dir", tmp_path / "pre")
    init = [m for m in metrics(tmp_path / "pre") if m.get("event") == "init"][0]
    assert init["format"] == "mae" and "fixed 2D sin-cos, unchanged: the checkpoint's 3x3" in init["report"]
    assert "decoder starts from its initialisation" in init["report"]

    # finetune --init ViTPose (4x3 grid) into a 32 px model (2x2): learned embedding, resampled;
    # the frozen attention network is ViTPose's encoder too, so L_AR is 0 at the first step
    vit = vitpose(width=192, depth=12, grid=(4, 3), joints=17)
    torch.save(vit, tmp_path / "vitpose.pth")
    run_ok("finetune", "--source", source, "--target", source, "--init", tmp_path / "vitpose.pth", *TINY,
           "--depth-bins", 4, "--head-channels", 8, "--max-steps", 1, "--log-every", 1, "--figure-every", 0,
           "--run-dir", tmp_path / "ft")
    records = metrics(tmp_path / "ft")
    init = [m for m in records if m.get("event") == "init"][0]
    assert "[vitpose]" in init["report"] and "interpolated (bicubic) from the checkpoint's 4x3 grid to 2x2" in init["report"]
    assert [m["ar_loss"] for m in records if "loss" in m] == [0.0]
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert config["model"]["encoder"]["learned_pos_embed"] is True
    from trainer.pose import load_pose_model
    model, _ = load_pose_model(tmp_path / "ft")   # the learned embedding is part of the pose checkpoint
    assert model.encoder.pos_embed.shape == (1, 5, 192) and isinstance(model.encoder.pos_embed, torch.nn.Parameter)
    assert model(torch.zeros(1, 3, SIZE, SIZE)).shape == (1, 21, 4, SIZE // 4, SIZE // 4)
    # and it exports like any other: the learned embedding goes into the ONNX graph and the safetensors
    run_ok("export", "--ckpt", tmp_path / "ft", "--out", tmp_path / "exported")
    exported = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert exported["onnx"]["max_abs_diff_vs_torch"] < 1e-4 and "learned position embedding" in exported["architecture"]["encoder"]
    from safetensors.torch import load_file
    assert torch.equal(load_file(str(tmp_path / "exported" / "model.safetensors"))["encoder.pos_embed"],
                       model.encoder.pos_embed.detach())
