"""ViT encoder and MAE (trainer.vit, trainer.mae): numerical checks against explicit formulas."""
import math

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from trainer.mae import MaskedAutoencoder, patch_foreground_ratio, random_masking
from trainer.vit import ViTEncoder, sincos_pos_embed_2d, vit_config

SMALL = dict(img_size=64, patch_size=16, embed_dim=64, depth=3, num_heads=4)
SMALL_MAE = dict(SMALL, decoder_embed_dim=32, decoder_num_heads=4)


def vit_param_count(width, depth, patch=16, mlp_ratio=4):
    """Parameters of our ViT encoder: patch projection, class token, blocks (LayerNorms, qkv with
    bias, proj, MLP), final LayerNorm. The position embedding is fixed, not a parameter."""
    hidden = mlp_ratio * width
    block = 2 * width + (3 * width * width + 3 * width) + (width * width + width) + 2 * width \
        + (width * hidden + hidden) + (hidden * width + width)
    return (3 * patch * patch * width + width) + width + depth * block + 2 * width


# -- ViT encoder ---------------------------------------------------------------------------------
def explicit_cls_attention(encoder, images):
    """Runs the blocks one by one and computes the full softmax(Q K^T / sqrt(d)) per block."""
    x = encoder.embed_patches(images)
    x = torch.cat([(encoder.cls_token + encoder.pos_embed[:, :1]).expand(x.shape[0], -1, -1), x], dim=1)
    rows = []
    for blk in encoder.blocks:
        B, T, C = x.shape
        H = blk.attn.num_heads
        d = C // H
        qkv = blk.attn.qkv(blk.norm1(x)).reshape(B, T, 3, H, d).permute(2, 0, 3, 1, 4)
        q, k = qkv[0], qkv[1]
        attention = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), dim=-1)  # (B, H, T, T)
        rows.append(attention[:, :, 0, 1:].mean(dim=1))
        x = blk(x)
    return encoder.norm(x), torch.stack(rows, dim=1)


def test_cls_attention_equals_explicit_softmax_row():
    torch.manual_seed(0)
    encoder = ViTEncoder(img_size=96, patch_size=16, embed_dim=96, depth=3, num_heads=6).eval()
    images = torch.randn(3, 3, 96, 96)
    tokens, attn = encoder.forward_with_cls_attention(images)
    ref_tokens, ref_attn = explicit_cls_attention(encoder, images)
    assert attn.shape == (3, 3, 36) and attn.dtype == torch.float32
    torch.testing.assert_close(attn, ref_attn, atol=1e-5, rtol=0)
    torch.testing.assert_close(tokens, ref_tokens, atol=1e-5, rtol=1e-5)
    # Rows are a softmax over 1 + N keys minus the class token's own share: each sums below 1.
    assert torch.all(attn.sum(-1) < 1) and torch.all(attn > 0)


def test_cls_attention_matches_timm_nonfused_attention_maps():
    """The same rows read from timm's own non-fused attention probabilities."""
    torch.manual_seed(1)
    encoder = ViTEncoder(**SMALL).eval()
    images = torch.randn(2, 3, 64, 64)
    _, attn = encoder.forward_with_cls_attention(images)
    maps = []
    for blk in encoder.blocks:
        blk.attn.fused_attn = False
        blk.attn.attn_drop.register_forward_hook(lambda m, a, out: maps.append(out[:, :, 0, 1:].mean(1)))
    encoder(images)
    torch.testing.assert_close(attn, torch.stack(maps, 1), atol=1e-5, rtol=0)


class RecordShapes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.ops.append((str(func), tuple(t.shape)))
        return out


def test_cls_attention_keeps_fused_attention_and_never_builds_n_by_n():
    torch.manual_seed(2)
    encoder = ViTEncoder(img_size=80, patch_size=16, embed_dim=64, depth=2, num_heads=4)
    assert all(blk.attn.fused_attn for blk in encoder.blocks)
    images = torch.randn(2, 3, 80, 80)
    plain = encoder(images)
    with RecordShapes() as recorder:
        tokens, attn = encoder.forward_with_cls_attention(images)
        (tokens.sum() + attn.sum()).backward()
    T = 1 + 25
    assert any("scaled_dot_product" in op for op, _ in recorder.ops)
    square = [(op, s) for op, s in recorder.ops if len(s) >= 2 and s[-1] == T and s[-2] == T]
    assert square == []
    assert torch.equal(tokens, plain)  # extraction does not touch the forward
    assert all(len(blk.attn.qkv._forward_hooks) == 0 for blk in encoder.blocks)  # hooks removed


def test_sincos_position_embedding_matches_mae_layout():
    def mae_reference(embed_dim, grid_size):  # MAE's util/pos_embed.py, numpy
        def one_d(dim, pos):
            omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
            out = np.einsum("m,d->md", pos.reshape(-1), omega)
            return np.concatenate([np.sin(out), np.cos(out)], axis=1)
        grid = np.meshgrid(np.arange(grid_size, dtype=np.float32), np.arange(grid_size, dtype=np.float32))
        grid = np.stack(grid, axis=0).reshape(2, 1, grid_size, grid_size)
        emb = np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)
        return np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)

    ours = sincos_pos_embed_2d(64, 4)
    np.testing.assert_allclose(ours.numpy(), mae_reference(64, 4), atol=1e-6)
    # Known values: token (row 2, col 3) is index 1 + 2*4 + 3; channels [sin col, cos col, sin row, cos row].
    t = ours[1 + 2 * 4 + 3]
    assert torch.all(ours[0] == 0)
    assert t[0].item() == pytest.approx(math.sin(3)) and t[16].item() == pytest.approx(math.cos(3))
    assert t[32].item() == pytest.approx(math.sin(2)) and t[48].item() == pytest.approx(math.cos(2))
    assert t[1].item() == pytest.approx(math.sin(3 / 10000 ** (1 / 16)))


def test_vit_base_parameter_count_and_shapes():
    with torch.device("meta"):
        base = ViTEncoder(**vit_config("base"))
        small = ViTEncoder(**vit_config("small", img_size=224))
    n_base = sum(p.numel() for p in base.parameters())
    assert n_base == vit_param_count(768, 12) == 85_647_360  # "about 86M"
    assert sum(p.numel() for p in small.parameters()) == vit_param_count(384, 12)
    assert base.num_patches == 256 and tuple(base.pos_embed.shape) == (1, 257, 768)
    assert small.num_patches == 196
    assert (base.depth, base.num_heads, base.blocks[0].mlp.fc1.out_features) == (12, 12, 3072)
    assert "pos_embed" not in base.state_dict()  # fixed, rebuilt from the configuration
    with pytest.raises(ValueError, match="unknown ViT size"):
        vit_config("huge")


def test_layer_decay_groups_with_timm():
    from timm.optim import param_groups_layer_decay
    encoder = ViTEncoder(**SMALL)
    groups = param_groups_layer_decay(encoder, weight_decay=0.05, layer_decay=0.75)
    scale_of = {}
    names = dict((id(p), n) for n, p in encoder.named_parameters())
    for g in groups:
        for p in g["params"]:
            scale_of[names[id(p)]] = g["lr_scale"]
    assert scale_of["patch_embed.proj.weight"] == pytest.approx(0.75 ** 4)
    assert scale_of["blocks.0.attn.qkv.weight"] == pytest.approx(0.75 ** 3)
    assert scale_of["blocks.2.mlp.fc2.weight"] == pytest.approx(0.75)  # last block below the top
    assert scale_of["norm.weight"] == 1.0


# -- MAE -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.95])
def test_random_masking_keeps_exact_count_and_ids_restore_inverts(ratio):
    torch.manual_seed(3)
    B, N, C = 4, 64, 5
    tokens = torch.randn(B, N, C)
    kept, removed, ids_restore = random_masking(tokens, ratio)
    keep = int(N * (1 - ratio))
    assert kept.shape == (B, keep, C)
    assert torch.all(removed.sum(1) == N - keep)
    # Re-insert the removed tokens after the kept ones, unshuffle: the original comes back.
    ids_shuffle = torch.argsort(ids_restore, dim=1)
    dropped = torch.gather(tokens, 1, ids_shuffle[:, keep:, None].expand(-1, -1, C))
    restored = torch.gather(torch.cat([kept, dropped], 1), 1, ids_restore[:, :, None].expand(-1, -1, C))
    assert torch.equal(restored, tokens)
    # Kept tokens are exactly those with removed == 0.
    for b in range(B):
        kept_ids = ids_shuffle[b, :keep]
        assert torch.all(removed[b, kept_ids] == 0)
        assert torch.equal(kept[b], tokens[b, kept_ids])
    assert not torch.equal(ids_restore[0], ids_restore[1])  # per-sample noise


def test_patchify_unpatchify_and_foreground_ratio_line_up():
    mae = MaskedAutoencoder(**SMALL_MAE)
    images = torch.randn(2, 3, 64, 64)
    patches = mae.patchify(images)
    assert patches.shape == (2, 16, 768)
    assert torch.equal(mae.unpatchify(patches), images)
    # Patch (row 1, col 2) is index 6; its first value is pixel (16, 32), channels last.
    assert torch.equal(patches[:, 6, :3], images[:, :, 16, 32])
    mask = torch.zeros(2, 1, 64, 64)
    mask[:, :, 16:32, 32:48] = 1.0   # patch 6 entirely foreground
    mask[:, :, 0:8, 0:16] = 1.0      # patch 0 half foreground
    ratio = patch_foreground_ratio(mask, 16)
    expected = torch.zeros(2, 16)
    expected[:, 6], expected[:, 0] = 1.0, 0.5
    assert torch.equal(ratio, expected)


def mae_reference_loss(mae, images, pred, removed):
    """MAE's forward_loss (models_mae.py) verbatim."""
    target = mae.patchify(images)
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    target = (target - mean) / (var + 1.e-6) ** .5
    loss = (pred - target) ** 2
    loss = loss.mean(dim=-1)
    return (loss * removed).sum() / removed.sum()


def run_seeded(mae, images, **kwargs):
    torch.manual_seed(123)
    return mae(images, **kwargs)


def test_fcr_tau_zero_and_switches_equal_plain_mae_loss_exactly():
    torch.manual_seed(4)
    images = torch.randn(3, 3, 64, 64)
    fg_mask = torch.rand(3, 1, 64, 64)
    mae = MaskedAutoencoder(**SMALL_MAE, tau=0.0)
    loss_tau0, pred, removed = run_seeded(mae, images, fg_mask=fg_mask)
    assert torch.equal(loss_tau0, mae_reference_loss(mae, images, pred, removed))
    plain, _, _ = run_seeded(mae, images, fg_mask=None)
    assert torch.equal(loss_tau0, plain)

    mae.tau = 4.0
    mae.use_fcr = False                               # "w/o FCR"
    assert torch.equal(run_seeded(mae, images, fg_mask=fg_mask)[0], plain)
    mae.use_fcr = True
    off = torch.zeros(3, dtype=torch.bool)            # "w/o target masks" on every sample
    assert torch.equal(run_seeded(mae, images, fg_mask=fg_mask, fcr_enabled=off)[0], plain)
    weighted = run_seeded(mae, images, fg_mask=fg_mask)[0]
    assert not torch.isclose(weighted, plain)


def test_fcr_weights_known_values():
    """Eq. 2-3 by hand: foreground patches weigh e^tau, background 1, half-foreground e^(tau/2)."""
    torch.manual_seed(5)
    mae = MaskedAutoencoder(**SMALL_MAE, tau=4.0, norm_pix_loss=False)
    images = torch.randn(2, 3, 64, 64)
    fg_mask = torch.zeros(2, 1, 64, 64)
    fg_mask[0, :, :, :32] = 1.0     # sample 0: left half foreground
    fg_mask[1, :, :8, :] = 1.0      # sample 1: top patch row half foreground
    enabled = torch.tensor([True, False])
    weights = mae.patch_weights(fg_mask, enabled)
    expected = torch.ones(2, 16)
    expected[0] = torch.tensor([math.e ** 4, math.e ** 4, 1, 1] * 4)
    torch.testing.assert_close(weights, expected)
    loss, pred, removed = run_seeded(mae, images, fg_mask=fg_mask, fcr_enabled=enabled)
    per_patch = ((pred - mae.patchify(images)) ** 2).mean(-1)
    by_hand = (per_patch * removed * expected).sum() / (removed * expected).sum()
    torch.testing.assert_close(loss, by_hand, rtol=1e-6, atol=0)
    enabled_both = mae.patch_weights(fg_mask, None)
    torch.testing.assert_close(enabled_both[1], torch.tensor([math.e ** 2] * 4 + [1.0] * 12))


def test_mae_gradient_reaches_every_parameter_and_decoder_shapes():
    torch.manual_seed(6)
    mae = MaskedAutoencoder(**SMALL_MAE)
    loss, pred, removed = mae(torch.randn(2, 3, 64, 64), torch.rand(2, 1, 64, 64), mask_ratio=0.75)
    assert pred.shape == (2, 16, 768) and removed.shape == (2, 16)
    assert torch.all(removed.sum(1) == 12)
    loss.backward()
    no_grad = [n for n, p in mae.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert no_grad == []
    assert all(k.startswith(("encoder.", "decoder_", "mask_token")) for k in mae.state_dict())


def test_mae_paper_configuration_decoder_size():
    with torch.device("meta"):
        mae = MaskedAutoencoder()  # ViT-B/16 at 256, one decoder block of width 512 (Table 5)
    decoder = sum(p.numel() for n, p in mae.named_parameters() if not n.startswith("encoder."))
    w = 512
    block = 12 * w * w + 13 * w
    assert len(mae.decoder_blocks) == 1 and mae.decoder_blocks[0].attn.num_heads == 16
    assert decoder == (768 * w + w) + w + block + 2 * w + (w * 768 + 768)
    assert sum(p.numel() for p in mae.encoder.parameters()) == vit_param_count(768, 12)


def test_cls_attention_stays_float32_under_bf16_autocast():
    torch.manual_seed(7)
    encoder = ViTEncoder(**SMALL).eval()
    images = torch.randn(2, 3, 64, 64)
    _, exact = encoder.forward_with_cls_attention(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, mixed = encoder.forward_with_cls_attention(images)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, exact, atol=2e-3, rtol=0)  # bf16 only upstream of q and k
