"""Stage 1 (docs/method.md): masked-image pre-training with foreground-centric reconstruction (FCR) and
background replacement, over source + target shards with ImageNet backgrounds.

Each batch mixes source and target images (shards.pipelines.pretrain_loader); with probability
--p-bg a masked image's background is replaced by a random background image. The MAE loss on the
removed patches is weighted by exp(tau x patch foreground ratio) (Eq. 2-3, trainer.mae).
The paper's ablations are switches:
    --no-fcr             w_i = 1 everywhere ("w/o FCR"; with --no-backgrounds it is plain MAE)
    --no-target-masks    target masks are not read: w_i = 1 and no background swap on target images
    --no-backgrounds     no background replacement ("w/o unconstrained set")
    --mask-ratio, --tau  Tables 9 and the mask-ratio ablation
    (no --target)        source-only pre-training
    --init CKPT          continue from weights instead of a random start (beyond the paper, often
                         the practical choice): Facebook's MAE releases (mae_pretrain_vit_base_full.pth
                         carries the decoder too: pass --decoder-dim 512 --decoder-depth 8), timm's
                         vit_*.mae (.pth or .safetensors), or one of this project's pre-training runs

    trainer pretrain --source shards/freihand/train --target shards/rhd-masked/train \
        --backgrounds shards/imagenet/val --run-dir runs/pre
    deepspeed --hostfile hosts --module trainer pretrain --ds-config ds_configs/pretrain_vitb_4096.json ...

Figures (figures/reconstruction_step*.png), one row per sample: input (after background
replacement), the visible patches, the reconstruction with the visible patches pasted back, the
patch weights exp(tau r) (dark = 1, bright = exp(tau)), and the mask.

Public API
    pretrain(source, target, backgrounds, *, settings, model="base", input_size=256, patch_size=16,
             mask_ratio=0.75, tau=4.0, use_fcr=True, use_target_masks=True, use_backgrounds=True,
             p_bg=0.5, target_fraction=None, norm_pix_loss=True, decoder_dim=512, decoder_depth=1,
             decoder_heads=16, augment=True, init=None) -> summary dict
    mae_kwargs(model, input_size, patch_size, decoder_dim, decoder_depth, decoder_heads) -> dict
"""
from __future__ import annotations

import math

import click
import numpy as np
import torch

from shards.pipelines import pretrain_loader
from shards.pipelines.shardset import ShardSet
from shards.schema import SampleError
from trainer import engine
from trainer.engine import StepOutput
from trainer.errors import ConfigError
from trainer.mae import MaskedAutoencoder
from trainer.pose import load_mae_init
from trainer.report import attention_colours
from trainer.vit import VIT_SIZES, vit_config

STAGE = "pretrain"


def mae_kwargs(model: str, input_size: int, patch_size: int, decoder_dim: int, decoder_depth: int,
               decoder_heads: int) -> dict:
    """The architecture (what a checkpoint must match): encoder size and decoder shape."""
    try:
        encoder = vit_config(model, img_size=input_size, patch_size=patch_size)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if input_size % patch_size:
        raise ConfigError(f"--input-size {input_size} is not a multiple of the patch size {patch_size}")
    return {**encoder, "decoder_embed_dim": decoder_dim, "decoder_depth": decoder_depth,
            "decoder_num_heads": decoder_heads}


def reconstruction_figure(module: MaskedAutoencoder, batch: dict, mask_ratio: float, rows: int = 4):
    """A grid: input | visible patches | reconstruction + visible | patch weights | mask."""
    param = next(module.parameters())
    images = batch["image"][:rows].to(param.device, param.dtype)
    masks = batch["mask"][:rows].to(param.device).float()
    fcr = batch["has_mask"][:rows].to(param.device)
    torch.manual_seed(0)  # the same masking pattern in every figure (training re-seeds per step)
    _, pred, removed = module(images, masks, mask_ratio, fcr)
    pred = pred.float()
    if module.norm_pix_loss:  # back from per-patch normalised pixels, as MAE's visualisation does
        target = module.patchify(images).float()
        pred = pred * (target.var(dim=-1, keepdim=True) + 1e-6).sqrt() + target.mean(dim=-1, keepdim=True)
    p = module.patch_size
    h, w = module.encoder.patch_embed.grid_size
    removed_px = removed.float().view(-1, 1, h, w).repeat_interleave(p, 2).repeat_interleave(p, 3)
    x = images.float()
    recon = module.unpatchify(pred)
    grey = torch.zeros_like(x)  # 0 in normalised units: the ImageNet mean, a neutral grey
    visible = x * (1 - removed_px) + grey * removed_px
    pasted = x * (1 - removed_px) + recon * removed_px
    weights = module.patch_weights(masks, fcr)
    weights = torch.ones_like(removed) if weights is None else weights.float()
    scale = math.expm1(module.tau) if module.use_fcr and module.tau > 0 else 1.0
    heat = ((weights - 1) / scale).view(-1, h, w).cpu().numpy()
    heat = [np.kron(attention_colours(m), np.ones((p, p, 1), np.uint8)) for m in heat]
    mask_rgb = (masks[:, 0].cpu().numpy() * 255).round().astype(np.uint8)
    columns = [engine.to_uint8(x), engine.to_uint8(visible), engine.to_uint8(pasted), heat,
               [np.repeat(m[..., None], 3, 2) for m in mask_rgb]]
    return engine.image_grid([list(row) for row in zip(*columns)])


def pretrain(source, target, backgrounds, *, settings: engine.TrainSettings, model: str = "base",
             input_size: int = 256, patch_size: int = 16, mask_ratio: float = 0.75, tau: float = 4.0,
             use_fcr: bool = True, use_target_masks: bool = True, use_backgrounds: bool = True,
             p_bg: float = 0.5, target_fraction: float | None = None, norm_pix_loss: bool = True,
             decoder_dim: int = 512, decoder_depth: int = 1, decoder_heads: int = 16, augment: bool = True,
             init: str | None = None) -> dict:
    if not 0.0 < mask_ratio < 1.0:
        raise ConfigError(f"--mask-ratio must be in (0, 1), got {mask_ratio}")
    if use_backgrounds and backgrounds is None:
        raise ConfigError("background replacement needs --backgrounds SHARDS (or pass --no-backgrounds)")
    architecture = mae_kwargs(model, input_size, patch_size, decoder_dim, decoder_depth, decoder_heads)
    options = dict(source=str(source), target=None if target is None else str(target),
                   backgrounds=str(backgrounds) if use_backgrounds else None, model=model, input_size=input_size,
                   patch_size=patch_size, mask_ratio=mask_ratio, tau=tau, use_fcr=use_fcr,
                   use_target_masks=use_target_masks, use_backgrounds=use_backgrounds,
                   p_bg=p_bg if use_backgrounds else 0.0, target_fraction=target_fraction,
                   norm_pix_loss=norm_pix_loss, augment=augment, init=None if init is None else str(init))
    run = engine.start_run(STAGE, settings, options, {"class": "MaskedAutoencoder", **architecture})
    try:
        loader = pretrain_loader(source, target, backgrounds if use_backgrounds else None,
                                 batch_size=run.micro_batch, input_size=input_size, p_bg=options["p_bg"],
                                 target_fraction=target_fraction, use_target_masks=use_target_masks,
                                 seed=settings.seed, rank=run.dist.rank, world_size=run.dist.world_size,
                                 global_batch=run.global_batch, augment=augment)
    except SampleError:
        raise
    except ValueError as e:  # too few samples for the batch, bad fractions
        raise ConfigError(f"pretrain data: {e}") from None
    if target is not None and use_target_masks and ShardSet.at(target).count(require_ext="mask.png") == 0:
        warning = (f"no sample of --target {target} has a mask.png (run `trainer masks` on it first?): "
                   "target images get weight 1 and no background swap, as with --no-target-masks")
        run.log({"event": "warning", "message": warning})
        if run.dist.is_main:
            click.echo(f"warning: {warning}", err=True)
    torch.manual_seed(settings.seed)
    mae = MaskedAutoencoder(**architecture, norm_pix_loss=norm_pix_loss, tau=tau, use_fcr=use_fcr)
    if init is not None and run.resume_tag is None:  # a resumed run loads its own checkpoint instead
        report = load_mae_init(mae, init)
        run.log({"event": "init", "checkpoint": report.checkpoint, "format": report.format, "report": str(report)})
        if run.dist.is_main:
            click.echo(str(report), err=True)
    weight_decay = run.ds_config["optimizer"]["params"].get("weight_decay", 0.0)

    def step(model_engine, batches):
        b = batches["train"]
        images = engine.model_inputs(model_engine, b["image"])
        mask = b["mask"].to(images.device).float()
        # has_mask is False for samples without a mask and, with --no-target-masks, for every
        # target sample (the loader does not read their masks): those patches weigh 1.
        loss, _, _ = model_engine(images, mask, mask_ratio, b["has_mask"].to(images.device))
        return StepOutput(loss, {"target_share": b["is_target"].float().mean()}, b["key"])

    def figure(module, batches, at_step):
        return {"reconstruction": reconstruction_figure(module, batches["train"], mask_ratio)}

    return engine.fit(run, mae, {"train": loader}, step, engine.param_groups(mae, weight_decay), figure)


@click.command(STAGE)
@click.option("--source", required=True, help="source shards (with mask.png where known)")
@click.option("--target", default=None, help="target shards (masks from `trainer masks`); none = source only")
@click.option("--backgrounds", default=None, help="background shards (ImageNet val)")
@click.option("--model", type=click.Choice(sorted(VIT_SIZES)), default="base", show_default=True, help="ViT size")
@click.option("--input-size", type=int, default=256, show_default=True)
@click.option("--patch-size", type=int, default=16, show_default=True)
@click.option("--mask-ratio", type=float, default=0.75, show_default=True)
@click.option("--tau", type=float, default=4.0, show_default=True, help="FCR weight exp(tau x foreground ratio)")
@click.option("--no-fcr", is_flag=True, help="no foreground-centric reconstruction: every patch weighs 1")
@click.option("--no-target-masks", is_flag=True,
              help="ignore the target's masks: no FCR weights and no background swap on target images")
@click.option("--no-backgrounds", is_flag=True, help="no background replacement")
@click.option("--p-bg", type=float, default=0.5, show_default=True, help="probability of a background swap")
@click.option("--target-fraction", type=float, default=None,
              help="target share of every batch (default: the target's share of all samples)")
@click.option("--norm-pix-loss/--no-norm-pix-loss", default=True, show_default=True)
@click.option("--decoder-dim", type=int, default=512, show_default=True)
@click.option("--decoder-depth", type=int, default=1, show_default=True)
@click.option("--decoder-heads", type=int, default=16, show_default=True)
@click.option("--augment/--no-augment", default=True, show_default=True)
@click.option("--init", default=None, help="start from these weights: an MAE release (.pth; *_full includes the "
              "decoder), timm's vit_*.mae (.pth/.safetensors) or a pre-training run directory")
@engine.training_options(epochs=800, warmup_epochs=40, checkpoint_every=1000, figure_every=1000)
@engine.clear_errors
def cli(**options):
    """MAE pre-training with foreground-centric reconstruction and background replacement."""
    settings = engine.settings_from_options(
        options, STAGE, engine.default_ds_config("pretrain_vitb_4096.json", "cpu_pretrain.json"))
    summary = pretrain(options.pop("source"), options.pop("target"), options.pop("backgrounds"),
                       settings=settings, use_fcr=not options.pop("no_fcr"),
                       use_target_masks=not options.pop("no_target_masks"),
                       use_backgrounds=not options.pop("no_backgrounds"), **options)
    click.echo(f"{summary['steps']} steps, {summary['steps_per_s']:.2f} steps/s, peak RSS "
               f"{summary['peak_rss_mib']:.0f} MiB -> {settings.run_dir}")
