"""Training-step throughput of the models in trainer/ (issue 5's benchmark), on this machine
(CUDA when present, else CPU).

(a) Pre-training: our MaskedAutoencoder against a reference MAE of identical dimensions built the
    way facebookresearch/mae's models_mae.py builds it (timm PatchEmbed and Block, numpy sin-cos
    position embedding in a frozen Parameter, repeat-index gathers; the paper's one-block decoder),
    ours with and without FCR.
(b) Fine-tuning: L_pose on a source batch plus L_AR on a target batch, with the class-token rows
    computed our way (q/k hook, fused attention kept), from full attention maps (timm's non-fused
    attention, probabilities read at attn_drop), and a step that runs the same extra target
    passes (E with grad, A without) without extracting attention (an MSE on their tokens), plus
    source-only for scale.

(c) The target passes alone (E with grad + A, backward, step; no source batch, no head): the
    part (b)'s variants differ in, so extraction costs are not diluted by the heatmap head.

Every variant has its own model and AdamW; a step is zero_grad, forward, loss, backward, step.
Variants are timed one step at a time in interleaved rounds (order rotated per round) on the same
inputs, so load from other processes hits all alike. Ratios use each variant's fastest step
(load only adds time); medians are printed and saved too. Speed ratios > 1 mean ours is faster.

    python -m bench.train_step [--quick]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from contextlib import contextmanager
from functools import partial

import numpy as np
import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

from shards.device import cuda_available
from trainer.heatmaps import pose_loss
from trainer.mae import MaskedAutoencoder
from trainer.pose import LAMBDA_AR, FrozenAttentionNet, PoseModel, attention_regularisation, finetune_loss

from bench.results import write_results


SETTINGS = {
    # quick: a minute or two; full: the paper's 256 px input (N = 256 patches), a shallower tiny ViT.
    # rounds: timed steps per variant, one step per variant per round.
    "quick": dict(img_size=128, embed_dim=192, depth=4, num_heads=3, batch=4, rounds=40, finetune_rounds=12, warmup=2),
    "full": dict(img_size=256, embed_dim=192, depth=6, num_heads=3, batch=4, rounds=40, finetune_rounds=10, warmup=2),
}
DECODER = dict(decoder_embed_dim=512, decoder_depth=1, decoder_num_heads=16)  # paper Table 5
NUM_JOINTS, DEPTH_BINS = 21, 64                                               # hands, docs/method.md
TARGET_TERMS = ("bare_target_passes", "ours_cls_rows", "full_attention_maps")


# -- reference MAE: models_mae.py's construction on timm 1.x -------------------------------------
def mae_get_2d_sincos_pos_embed(embed_dim, grid_size):
    def one_d(dim, pos):
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    grid = np.stack(np.meshgrid(np.arange(grid_size, dtype=np.float32), np.arange(grid_size, dtype=np.float32)))
    grid = grid.reshape(2, 1, grid_size, grid_size)
    emb = np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)
    return np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)


class ReferenceMAE(nn.Module):
    def __init__(self, img_size, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                 decoder_embed_dim=512, decoder_depth=1, decoder_num_heads=16, mlp_ratio=4.,
                 norm_layer=partial(nn.LayerNorm, eps=1e-6), norm_pix_loss=True):
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
                                     for _ in range(depth)])
        self.norm = norm_layer(embed_dim)
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList([Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True,
                                                   norm_layer=norm_layer) for _ in range(decoder_depth)])
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size ** 2 * in_chans, bias=True)
        self.norm_pix_loss = norm_pix_loss
        grid = int(num_patches ** .5)
        self.pos_embed.data.copy_(torch.from_numpy(mae_get_2d_sincos_pos_embed(embed_dim, grid)).float().unsqueeze(0))
        self.decoder_pos_embed.data.copy_(
            torch.from_numpy(mae_get_2d_sincos_pos_embed(decoder_embed_dim, grid)).float().unsqueeze(0))
        w = self.patch_embed.proj.weight.data
        torch.nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        torch.nn.init.normal_(self.cls_token, std=.02)
        torch.nn.init.normal_(self.mask_token, std=.02)
        self.apply(self._init_weights)

    def _init_weights(self, m):
        if isinstance(m, nn.Linear):
            torch.nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    def patchify(self, imgs):
        p = self.patch_embed.patch_size[0]
        h = w = imgs.shape[2] // p
        x = imgs.reshape(shape=(imgs.shape[0], 3, h, p, w, p))
        x = torch.einsum('nchpwq->nhwpqc', x)
        return x.reshape(shape=(imgs.shape[0], h * w, p ** 2 * 3))

    def random_masking(self, x, mask_ratio):
        N, L, D = x.shape
        len_keep = int(L * (1 - mask_ratio))
        noise = torch.rand(N, L, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, D))
        mask = torch.ones([N, L], device=x.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, dim=1, index=ids_restore)
        return x_masked, mask, ids_restore

    def forward_encoder(self, x, mask_ratio):
        x = self.patch_embed(x)
        x = x + self.pos_embed[:, 1:, :]
        x, mask, ids_restore = self.random_masking(x, mask_ratio)
        cls_token = self.cls_token + self.pos_embed[:, :1, :]
        x = torch.cat((cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, x, ids_restore):
        x = self.decoder_embed(x)
        mask_tokens = self.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        x_ = torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        x = torch.cat([x[:, :1, :], x_], dim=1)
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        return self.decoder_pred(x)[:, 1:, :]

    def forward_loss(self, imgs, pred, mask):
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.e-6) ** .5
        loss = ((pred - target) ** 2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum()

    def forward(self, imgs, mask_ratio=0.75):
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask


# -- attention maps the usual slow way -----------------------------------------------------------
@contextmanager
def full_attention_maps(encoder):
    """Switch every block to timm's non-fused attention and read the class-token rows from the
    materialised (B, H, T, T) probabilities at attn_drop."""
    rows = []
    handles = []
    for blk in encoder.blocks:
        blk.attn.fused_attn = False
        handles.append(blk.attn.attn_drop.register_forward_hook(
            lambda module, args, out: rows.append(out[:, :, 0, 1:].mean(dim=1))))
    try:
        yield rows
    finally:
        for blk, h in zip(encoder.blocks, handles):
            blk.attn.fused_attn = True
            h.remove()


# -- steps -------------------------------------------------------------------------------------------
def make_step(model, loss_fn):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        return loss
    return step


def mae_steps(cfg, images, fg_mask):
    enc = dict(img_size=cfg["img_size"], embed_dim=cfg["embed_dim"], depth=cfg["depth"], num_heads=cfg["num_heads"])
    torch.manual_seed(0)
    reference = ReferenceMAE(**enc, **DECODER).to(images.device)
    torch.manual_seed(0)
    plain = MaskedAutoencoder(**enc, **DECODER, use_fcr=False).to(images.device)
    torch.manual_seed(0)
    fcr = MaskedAutoencoder(**enc, **DECODER, use_fcr=True, tau=4.0).to(images.device)
    return {
        "mae_reference": make_step(reference, lambda: reference(images, 0.75)[0]),
        "mae_ours_no_fcr": make_step(plain, lambda: plain(images, None, 0.75)[0]),
        "mae_ours_fcr": make_step(fcr, lambda: fcr(images, fg_mask, 0.75)[0]),
    }


def target_terms(model: PoseModel, frozen: FrozenAttentionNet, target: torch.Tensor) -> dict:
    """The three ways to spend the extra target passes (E with grad, A without), as losses."""
    def bare():  # the same two passes, no attention extracted: an MSE on their tokens
        with torch.no_grad():
            frozen_tokens = frozen.encoder(target)
        return ((model.encoder(target) - frozen_tokens) ** 2).mean()

    def ours():
        return attention_regularisation(model.cls_attention(target), frozen(target))

    def full_maps():
        with torch.no_grad(), full_attention_maps(frozen.encoder) as rows:
            frozen.encoder(target)
        frozen_maps = torch.stack(rows, dim=1)
        with full_attention_maps(model.encoder) as rows:
            model.encoder(target)
        return attention_regularisation(torch.stack(rows, dim=1), frozen_maps)
    return dict(zip(TARGET_TERMS, (bare, ours, full_maps)))


def pose_pair(cfg, device):
    torch.manual_seed(0)
    enc = dict(img_size=cfg["img_size"], embed_dim=cfg["embed_dim"], depth=cfg["depth"], num_heads=cfg["num_heads"])
    model = PoseModel(enc, NUM_JOINTS, DEPTH_BINS).to(device)
    return model, FrozenAttentionNet(model.encoder)


def finetune_steps(cfg, source, target, uvz, visible):
    """(b): L_pose + lambda * target term, and source only."""
    lam = LAMBDA_AR["hand"]
    model, _ = pose_pair(cfg, source.device)
    variants = {"ft_source_only": make_step(model, lambda m=model: pose_loss(m(source), uvz, visible))}
    for name in TARGET_TERMS:
        model, frozen = pose_pair(cfg, source.device)
        term = target_terms(model, frozen, target)[name]
        variants[f"ft_{name}"] = make_step(
            model, lambda m=model, term=term: finetune_loss(pose_loss(m(source), uvz, visible), term(), lam))
    return variants


def target_pass_steps(cfg, target):
    """(c): the target term alone; only the encoder is optimised (no head, no source batch)."""
    variants = {}
    for name in TARGET_TERMS:
        model, frozen = pose_pair(cfg, target.device)
        variants[f"tp_{name}"] = make_step(model.encoder, target_terms(model, frozen, target)[name])
    return variants


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fcr_weight_seconds(cfg, fg_mask, repeats=200) -> float:
    """Median seconds of the only work FCR adds to a step: Eq. 2's weights (avg-pool, exp)."""
    with torch.device("meta"):  # the weights need no model parameters
        mae = MaskedAutoencoder(img_size=cfg["img_size"], embed_dim=cfg["embed_dim"], depth=1,
                                num_heads=cfg["num_heads"], **DECODER, tau=4.0)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        mae.patch_weights(fg_mask)
        synchronize(fg_mask.device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def time_interleaved(variants: dict, rounds: int, warmup: int) -> dict:
    """One step of each variant per round, the order rotated every round; per-step seconds."""
    times = {name: [] for name in variants}
    for step in variants.values():
        for _ in range(warmup):
            step()
    names = list(variants)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter()
            loss = variants[name]()
            synchronize(loss.device)
            times[name].append(time.perf_counter() - t)
    return times


def compute_ratios(t: dict) -> dict:
    """t: seconds per step of each variant (one statistic)."""
    return {
        "mae_ours_vs_reference_speed": t["mae_reference"] / t["mae_ours_no_fcr"],
        "mae_fcr_vs_reference_speed": t["mae_reference"] / t["mae_ours_fcr"],
        "fcr_overhead": t["mae_ours_fcr"] / t["mae_ours_no_fcr"] - 1,
        "cls_rows_overhead_vs_bare_step": t["ft_ours_cls_rows"] / t["ft_bare_target_passes"] - 1,
        "full_maps_vs_ours_step_time": t["ft_full_attention_maps"] / t["ft_ours_cls_rows"],
        "full_maps_overhead_vs_bare_step": t["ft_full_attention_maps"] / t["ft_bare_target_passes"] - 1,
        "target_passes_share_of_step": (t["ft_bare_target_passes"] - t["ft_source_only"]) / t["ft_bare_target_passes"],
        "cls_rows_overhead_vs_bare_target_passes_alone": t["tp_ours_cls_rows"] / t["tp_bare_target_passes"] - 1,
        "full_maps_overhead_vs_bare_target_passes_alone": t["tp_full_attention_maps"] / t["tp_bare_target_passes"] - 1,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="128 px, 4 blocks, a minute or two")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared machine one thread is timed far more "
                         "steadily than several that wait on each other)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if cuda_available() else "cpu")
    mode = "quick" if args.quick else "full"
    cfg = SETTINGS[mode]
    B, S = cfg["batch"], cfg["img_size"]
    g = torch.Generator().manual_seed(0)
    images = torch.randn(B, 3, S, S, generator=g).to(device)
    fg_mask = torch.rand(B, 1, S, S, generator=g).to(device)
    target = torch.randn(B, 3, S, S, generator=g).to(device)
    hm = S // 4
    uvz = (torch.rand(B, NUM_JOINTS, 3, generator=g) * torch.tensor([hm - 1, hm - 1, DEPTH_BINS - 1])).to(device)
    visible = torch.ones(B, NUM_JOINTS, dtype=torch.bool, device=device)

    t0 = time.perf_counter()
    times = time_interleaved(mae_steps(cfg, images, fg_mask), cfg["rounds"], cfg["warmup"])
    times |= time_interleaved(finetune_steps(cfg, images, target, uvz, visible), cfg["finetune_rounds"],
                              cfg["warmup"])
    times |= time_interleaved(target_pass_steps(cfg, target), cfg["rounds"], cfg["warmup"])
    fcr_weights_s = fcr_weight_seconds(cfg, fg_mask)
    wall = time.perf_counter() - t0

    # Load from other processes only ever adds time: the fastest step is the best estimate of a
    # step's own cost on a shared machine; ratios use it, medians are reported alongside.
    fastest = {k: min(v) for k, v in times.items()}
    median = {k: statistics.median(v) for k, v in times.items()}
    ips = {k: B / v for k, v in fastest.items()}
    ratios, ratios_median = compute_ratios(fastest), compute_ratios(median)
    ratios["fcr_weights_share_of_step"] = fcr_weights_s / fastest["mae_ours_no_fcr"]
    goals = {
        "mae_ours_at_least_reference": ratios["mae_ours_vs_reference_speed"] >= 1.0,
        "fcr_adds_at_most_3pct": ratios["fcr_overhead"] <= 0.03,
        "cls_rows_add_at_most_5pct_over_bare": ratios["cls_rows_overhead_vs_bare_step"] <= 0.05,
        "cls_rows_beat_full_maps": ratios["full_maps_vs_ours_step_time"] > 1.0,
    }

    print(f"train_step ({mode}): ViT width {cfg['embed_dim']}, {cfg['depth']} blocks, {cfg['num_heads']} heads, "
          f"{S}px (N={(S // 16) ** 2}), batch {B}; decoder 512x1; head K={NUM_JOINTS} x Dz={DEPTH_BINS} x "
          f"{hm}x{hm}; {device.type}, {torch.get_num_threads()} threads; {cfg['rounds']} (fine-tune {cfg['finetune_rounds']}) "
          f"interleaved steps per variant")
    print(f"{'variant':26s} {'fastest s':>10s} {'median s':>10s} {'images/s':>9s}  (images/s from the fastest step)")
    for k in times:
        print(f"{k:26s} {fastest[k]:10.4f} {median[k]:10.4f} {ips[k]:9.2f}")
    print(f"{'ratio':48s} {'fastest':>8s} {'median':>8s}")
    for k, v in ratios.items():
        print(f"  {k:46s} {v:8.3f} {ratios_median.get(k, v):8.3f}")
    print(f"FCR's own work (Eq. 2 weights): {fcr_weights_s * 1e6:.0f} us per step "
          f"= {100 * ratios['fcr_weights_share_of_step']:.2f}% of our MAE step "
          f"(FCR adds only these and one (B, N) multiply; the rest of fcr_overhead is timing noise)")
    print("goals (fastest): " + ", ".join(f"{k}={'met' if v else 'NOT met'}" for k, v in goals.items()))

    written = write_results("train_step", args.quick, {
        "benchmark": "train_step", "mode": mode, "config": cfg | DECODER | {"num_joints": NUM_JOINTS,
                                                                           "depth_bins": DEPTH_BINS},
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"},
        "seconds_per_step": times, "fastest_seconds_per_step": fastest, "median_seconds_per_step": median,
        "images_per_second": ips, "fcr_weights_seconds": fcr_weights_s,
        "ratios": ratios, "ratios_from_medians": ratios_median, "goals": goals,
        "wall_seconds": wall,
    }, indent=2)
    print(f"wrote {written} ({wall:.0f} s)")


if __name__ == "__main__":
    main()
