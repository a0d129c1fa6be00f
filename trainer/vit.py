"""ViT encoder E (docs/method.md "Modules"): timm's PatchEmbed and Block, a learnable class token and
MAE's fixed 2D sin-cos position embedding, plus the two things this method needs from it:

- MAE encodes only the kept patch tokens: `embed_patches` (patch embedding + position) and
  `encode_tokens` (prepend the class token, run the blocks) are separate steps so the masking can
  sit in between (trainer.mae).
- The attention regulariser (Eq. 6) needs, per block, the class-token row of the softmax
  attention over the patch tokens (its own entry dropped), averaged over heads.
  `forward_with_cls_attention` gets it from a forward hook on each `blk.attn.qkv`: softmax of
  (q_cls * scale) @ k^T is O(N) per block, while the block itself keeps timm's fused attention
  (F.scaled_dot_product_attention), so no N x N attention map is ever materialised.
  The rows carry gradients through q and k. Do not wrap the blocks in reentrant activation
  checkpointing (its forward runs without grad, so the rows would have none).

Public API
    vit_config(name, img_size=256, patch_size=16, **overrides) -> dict    name: "tiny" | "small" | "base" | "large"
    ViTEncoder(img_size=256, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
               mlp_ratio=4.0, drop_path_rate=0.0, learned_pos_embed=False)
        learned_pos_embed: a trainable position embedding (initialised to the sin-cos one, in the
        state dict as `pos_embed`) for weights trained with one (ViTPose; trainer.official_weights)
        .forward(images (B,3,H,W)) -> tokens (B, 1+N, C)          class token first, after norm
        .forward_with_cls_attention(images) -> (tokens, attn (B, depth, N)) float32
        .embed_patches(images) -> (B, N, C);  .encode_tokens(patch_tokens (B, n, C)) -> (B, 1+n, C)
        .group_matcher(coarse=False)   for timm.optim.param_groups_layer_decay (ViTPose's decay)
    sincos_pos_embed_2d(embed_dim, grid_size) -> (1+gh*gw, embed_dim), class-token row zero
    cls_attention_from_qkv(attn, qkv) -> (B, N)

Images are float tensors already normalised by the input pipeline.
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

# Width, depth and heads of the standard ViT sizes (MLP ratio 4 throughout).
VIT_SIZES = {
    # Not a standard size: 4 blocks of width 128 for the CPU demo and benchmark, where a ViT-Tiny
    # at 64 px learns too slowly to show anything in minutes (bench/README.md).
    "micro": dict(embed_dim=128, depth=4, num_heads=4),
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
    "large": dict(embed_dim=1024, depth=24, num_heads=16),
}


def vit_config(name: str, img_size: int = 256, patch_size: int = 16, **overrides) -> dict:
    """ViTEncoder keyword arguments for a named size; `overrides` replace any of them."""
    if name not in VIT_SIZES:
        raise ValueError(f"unknown ViT size {name!r}; choose one of {sorted(VIT_SIZES)}")
    return dict(img_size=img_size, patch_size=patch_size, mlp_ratio=4.0, **VIT_SIZES[name]) | overrides


def sincos_pos_embed_2d(embed_dim: int, grid_size) -> torch.Tensor:
    """MAE's fixed 2D sin-cos position embedding, (1 + gh*gw, embed_dim), class-token row zero.

    Same layout as MAE's `get_2d_sincos_pos_embed` (so MAE checkpoints line up): the first half
    of the channels encodes the patch column, the second half its row, each as
    [sin(pos * omega), cos(pos * omega)] with omega = 1 / 10000^(i / (embed_dim/4))."""
    gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    if embed_dim % 4:
        raise ValueError(f"sin-cos 2D position embedding needs embed_dim divisible by 4, got {embed_dim}")
    quarter = embed_dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(gh, dtype=torch.float64),
                                torch.arange(gw, dtype=torch.float64), indexing="ij")

    def one_axis(pos):  # (gh*gw,) -> (gh*gw, embed_dim/2)
        angles = pos.reshape(-1, 1) * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    grid = torch.cat([one_axis(cols), one_axis(rows)], dim=1)
    return torch.cat([torch.zeros(1, embed_dim, dtype=torch.float64), grid]).float()


def cls_attention_from_qkv(attn: nn.Module, qkv: torch.Tensor) -> torch.Tensor:
    """Class-token attention row over the patch tokens, averaged over heads, from the output of
    a timm `Attention.qkv` projection (B, T, 3*H*d) with the class token at position 0.

    softmax over all T keys (the class token included, as in the block itself), then the class
    token's own entry is dropped (no renormalisation). Costs O(T) per head; computed in float32 so
    the regulariser's small differences survive bf16 training."""
    B, T, _ = qkv.shape
    qkv = qkv.view(B, T, 3, attn.num_heads, attn.head_dim)
    q_cls = attn.q_norm(qkv[:, :1, 0].transpose(1, 2))  # (B, H, 1, d)
    k = attn.k_norm(qkv[:, :, 1].transpose(1, 2))       # (B, H, T, d)
    with torch.autocast(qkv.device.type, enabled=False):  # keep float32 under bf16 autocast
        row = ((q_cls.float() * attn.scale) @ k.float().transpose(-2, -1)).softmax(dim=-1)  # (B, H, 1, T)
    return row[:, :, 0, 1:].mean(dim=1)


class ViTEncoder(nn.Module):
    def __init__(self, img_size=256, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                 mlp_ratio=4.0, drop_path_rate=0.0, learned_pos_embed=False):
        super().__init__()
        self.embed_dim, self.depth, self.num_heads = embed_dim, depth, num_heads
        self.learned_pos_embed = learned_pos_embed
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # Fixed, recomputed from the configuration: a buffer outside the state dict (MAE keeps a
        # frozen Parameter; nothing to learn, nothing to save).
        sincos = sincos_pos_embed_2d(embed_dim, self.patch_embed.grid_size)[None]
        if learned_pos_embed:  # weights that were trained with a learned one (ViTPose) keep theirs
            self.pos_embed = nn.Parameter(sincos)
        else:
            self.register_buffer("pos_embed", sincos, persistent=False)
        drop_path = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # stochastic depth grows with depth
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=drop_path[i],
                  norm_layer=partial(nn.LayerNorm, eps=1e-6))
            for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.initialize_weights()

    def initialize_weights(self):
        # MAE's initialisation: the patch projection like a Linear, normal(0.02) class token,
        # xavier-uniform Linears, unit LayerNorms.
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        self.apply(init_linear_and_layernorm)

    def embed_patches(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> patch tokens with position embedding (B, N, C), row-major patch order."""
        return self.patch_embed(images) + self.pos_embed[:, 1:]

    def encode_tokens(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        """Prepend the class token (with its position) to any subset of patch tokens, run the blocks."""
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(patch_tokens.shape[0], -1, -1)
        x = torch.cat([cls, patch_tokens], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_tokens(self.embed_patches(images))

    def forward_with_cls_attention(self, images: torch.Tensor):
        """-> (tokens (B, 1+N, C), attn (B, depth, N) float32), the blocks' class-token rows."""
        with self.recording_cls_attention() as rows:
            tokens = self(images)
        if len(rows) != self.depth:  # e.g. blocks wrapped so that qkv runs twice or not at all
            raise RuntimeError(f"expected {self.depth} class-token rows from one forward, got {len(rows)}")
        return tokens, torch.stack(rows, dim=1)

    @contextmanager
    def recording_cls_attention(self):
        """Within the block, every forward appends each block's class-token row (B, N) to the
        yielded list, in block order. Hooks are removed on exit, even on error."""
        rows: list[torch.Tensor] = []
        handles = [blk.attn.qkv.register_forward_hook(
            lambda module, args, output, attn=blk.attn: rows.append(cls_attention_from_qkv(attn, output)))
            for blk in self.blocks]
        try:
            yield rows
        finally:
            for h in handles:
                h.remove()

    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer groups for timm's param_groups_layer_decay, as ViTPose/BEiT decay: embeddings
        at layer 0, block i at i + 1, the final norm alone on top (lr scale 1). timm's own ViT
        merges its norm into the last block ((99999,) = "previous group"); we do not."""
        return dict(stem=r"^cls_token|^pos_embed|^patch_embed",
                    blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (100000,))])

    def no_weight_decay(self) -> set:
        return {"cls_token", "pos_embed"} if self.learned_pos_embed else {"cls_token"}


def init_linear_and_layernorm(m: nn.Module):
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
