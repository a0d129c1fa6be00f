"""Masked autoencoder with foreground-centric reconstruction (docs/method.md Stage 1, Eq. 2-3).

Reads like MAE's models_mae.py: `forward_encoder` (embed, random masking, encode the kept tokens),
`forward_decoder` (one block of width 512, paper Table 5), `forward_loss` (per-patch MSE on
removed patches, weighted by the patch's foreground ratio).

FCR (Eq. 2-3): patch_foreground_ratio = AvgPool2d(patch)(mask), one value per patch in [0, 1];
weight = exp(tau * ratio); loss = sum(removed * weight * mse) / sum(removed * weight). With the
weights all 1 this is MAE's loss bit for bit, which happens when
- `use_fcr=False` ("w/o FCR"), or `tau=0`, or `fg_mask is None`;
- per sample, `fcr_enabled[b] = False` ("w/o M_T": target images reconstruct unweighted).

Public API
    MaskedAutoencoder(img_size=256, patch_size=16, in_chans=3, embed_dim=768, depth=12,
                      num_heads=12, mlp_ratio=4.0, drop_path_rate=0.0, decoder_embed_dim=512,
                      decoder_depth=1, decoder_num_heads=16, norm_pix_loss=True, tau=4.0,
                      use_fcr=True)
        .forward(images (B,3,H,W), fg_mask (B,1,H,W) in [0,1] or None, mask_ratio=0.75,
                 fcr_enabled (B,) bool or None) -> (loss, pred (B,N,p*p*3), removed (B,N) 1=removed)
        .encoder            the ViTEncoder; its state-dict keys are `encoder.*`
        .patchify(images) -> (B, N, p*p*3);  .unpatchify(patches) -> (B, 3, H, W)
        .patch_weights(fg_mask, fcr_enabled) -> (B, N) or None
    random_masking(tokens, mask_ratio) -> (kept, removed, ids_restore)
    patch_foreground_ratio(fg_mask, patch_size) -> (B, N)
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from trainer.vit import ViTEncoder, init_linear_and_layernorm, sincos_pos_embed_2d


def random_masking(tokens: torch.Tensor, mask_ratio: float):
    """MAE's per-sample random masking by argsort of uniform noise.

    tokens (B, N, C) -> kept (B, N_keep, C) with N_keep = int(N * (1 - mask_ratio)),
    removed (B, N) float with 1 = removed (in the original patch order), and ids_restore (B, N)
    such that gathering [kept, mask tokens] with ids_restore puts every token back in place."""
    B, N, C = tokens.shape
    num_keep = int(N * (1 - mask_ratio))
    noise = torch.rand(B, N, device=tokens.device)
    ids_shuffle = torch.argsort(noise, dim=1)       # ascending: small noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :num_keep]
    kept = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, C))
    removed = torch.ones(B, N, device=tokens.device, dtype=tokens.dtype)
    removed[:, :num_keep] = 0
    removed = torch.gather(removed, 1, ids_restore)
    return kept, removed, ids_restore


def patch_foreground_ratio(fg_mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, 1, H, W) soft mask in [0, 1] -> (B, N) fraction of foreground in each patch, in the
    row-major order patchify uses."""
    return F.avg_pool2d(fg_mask.float(), kernel_size=patch_size, stride=patch_size).flatten(1)


class MaskedAutoencoder(nn.Module):
    def __init__(self, img_size=256, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                 mlp_ratio=4.0, drop_path_rate=0.0, decoder_embed_dim=512, decoder_depth=1,
                 decoder_num_heads=16, norm_pix_loss=True, tau=4.0, use_fcr=True):
        super().__init__()
        self.encoder = ViTEncoder(img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio,
                                  drop_path_rate)
        self.patch_size, self.in_chans = patch_size, in_chans
        self.norm_pix_loss, self.tau, self.use_fcr = norm_pix_loss, float(tau), use_fcr

        # Decoder (pre-training only): Linear -> mask tokens re-inserted -> position -> blocks.
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.register_buffer("decoder_pos_embed",
                             sincos_pos_embed_2d(decoder_embed_dim, self.encoder.patch_embed.grid_size)[None],
                             persistent=False)
        self.decoder_blocks = nn.ModuleList([
            Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True,
                  norm_layer=partial(nn.LayerNorm, eps=1e-6))
            for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size ** 2 * in_chans)

        nn.init.normal_(self.mask_token, std=0.02)
        for module in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            module.apply(init_linear_and_layernorm)

    # -- patches -------------------------------------------------------------------------------
    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N, p*p*C), patches row-major, each patch's values (p, p, C)."""
        p = self.patch_size
        B, C, H, W = images.shape
        h, w = H // p, W // p
        x = images.reshape(B, C, h, p, w, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(B, h * w, p * p * C)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, N, p*p*C) -> (B, C, H, W), the inverse of patchify."""
        p, C = self.patch_size, self.in_chans
        h, w = self.encoder.patch_embed.grid_size
        x = patches.reshape(patches.shape[0], h, w, p, p, C)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(patches.shape[0], C, h * p, w * p)

    # -- model ---------------------------------------------------------------------------------
    def forward_encoder(self, images: torch.Tensor, mask_ratio: float):
        tokens = self.encoder.embed_patches(images)  # position is added before masking (MAE)
        kept, removed, ids_restore = random_masking(tokens, mask_ratio)
        return self.encoder.encode_tokens(kept), removed, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(latent)
        B, N = ids_restore.shape
        mask_tokens = self.mask_token.expand(B, N + 1 - x.shape[1], -1)
        patches = torch.cat([x[:, 1:], mask_tokens], dim=1)  # kept first, then removed: unshuffle
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]  # drop the class token

    def patch_weights(self, fg_mask: torch.Tensor | None, fcr_enabled: torch.Tensor | None = None):
        """Eq. 2 per-patch weights exp(tau * foreground ratio), (B, N); None means all ones
        (FCR switched off or no mask), which keeps the loss exactly MAE's."""
        if not self.use_fcr or fg_mask is None:
            return None
        weights = torch.exp(self.tau * patch_foreground_ratio(fg_mask, self.patch_size))
        if fcr_enabled is not None:  # "w/o M_T": samples without a trusted mask get weight 1
            weights = torch.where(fcr_enabled.to(weights.device, torch.bool)[:, None], weights, 1.0)
        return weights

    def forward_loss(self, images, pred, removed, weights=None):
        """Eq. 3: weighted mean over removed patches of the per-patch MSE (MAE's loss if weights
        is None). Computed in float32."""
        target = self.patchify(images).float()
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.e-6) ** .5
        per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
        weight = removed.float() if weights is None else removed.float() * weights
        return (per_patch * weight).sum() / weight.sum()

    def forward(self, images, fg_mask=None, mask_ratio=0.75, fcr_enabled=None):
        if fg_mask is not None and fg_mask.shape[-2:] != images.shape[-2:]:
            raise ValueError(f"fg_mask {tuple(fg_mask.shape)} does not match images {tuple(images.shape)}")
        latent, removed, ids_restore = self.forward_encoder(images, mask_ratio)
        pred = self.forward_decoder(latent, ids_restore)
        loss = self.forward_loss(images, pred, removed, self.patch_weights(fg_mask, fcr_enabled))
        return loss, pred, removed
