"""Stage 0, part 1 (docs/method.md "Stage 0: masks"): train the segmentation network S, a U-Net, on
source images and their foreground masks with binary cross-entropy, and report its mask IoU on a
held-out part of the source.

The held-out part is the last `--holdout-shards` shard files of --source (dataprep shuffles
samples before writing, so they are a random subset); training reads the others through the DALI
segmentation pipeline. The IoU is computed at the end, on rank 0, over every held-out sample that
has a mask, at the network's input size, with the same Python preprocessing `trainer masks` uses
(PIL bilinear resize + ImageNet normalisation), and logged to metrics.jsonl and results.json.

    trainer segnet --source shards/freihand/train --run-dir runs/seg
    deepspeed --num_gpus 8 --module trainer segnet --source ... --run-dir runs/seg

Public API
    train_segnet(source, *, settings, input_size=256, base=64, holdout_shards=1, augment=True) -> dict
    split_holdout(source, holdout_shards) -> (train_pattern, holdout_pattern)
    prepare_images(images: list of HxWx3 uint8, input_size) -> (B, 3, S, S) normalised float
    holdout_iou(model, holdout, input_size, batch_size=16, device="cpu") -> {"mask_iou", "samples"}
"""
from __future__ import annotations

import json

import click
import numpy as np
import torch
from PIL import Image

from shards.pipelines import segnet_loader
from shards.pipelines.augment import IMAGENET_MEAN, IMAGENET_STD
from shards.reader import iter_samples, list_shards
from shards.schema import SampleError
from trainer import engine
from trainer.engine import StepOutput
from trainer.errors import ConfigError
from trainer.unet import UNet, mask_iou, predict_masks, segnet_loss

STAGE = "segnet"


def split_holdout(source, holdout_shards: int) -> tuple[str, str]:
    """Shard patterns (brace lists, as shards.reader.list_shards reads them) for training and
    for the held-out IoU: the last `holdout_shards` shard files are held out."""
    shards = list_shards(source)
    if holdout_shards < 1 or len(shards) <= holdout_shards:
        raise ConfigError(f"{source} has {len(shards)} shard file(s): holding out {holdout_shards} leaves "
                          "nothing to train on (--holdout-shards must be at least 1 and below the shard count)")

    def pattern(paths):
        return str(paths[0]) if len(paths) == 1 else f"{paths[0].parent}/{{{','.join(p.name for p in paths)}}}"
    return pattern(shards[:-holdout_shards]), pattern(shards[-holdout_shards:])


def prepare_images(images: list[np.ndarray], input_size: int) -> torch.Tensor:
    """HxWx3 uint8 crops -> (B, 3, S, S) float32 normalised as the DALI pipelines normalise."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    resized = [np.asarray(Image.fromarray(im).resize((input_size, input_size), Image.BILINEAR)) for im in images]
    x = torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2).float() / 255.0
    return (x - mean) / std


def _resize_mask(mask: np.ndarray, input_size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(mask).resize((input_size, input_size), Image.BILINEAR), np.float32) / 255.0


@torch.no_grad()
def holdout_iou(model: torch.nn.Module, holdout, input_size: int, batch_size: int = 16, device="cpu") -> dict:
    """Mean IoU (threshold 0.5) of the predicted and stored masks over every held-out sample
    that has a mask, at the input size."""
    dtype = next(model.parameters()).dtype
    ious, images, masks = [], [], []

    def flush():
        pred = predict_masks(model, prepare_images(images, input_size).to(device, dtype))
        target = torch.from_numpy(np.stack(masks))[:, None].to(pred.device)
        ious.extend(mask_iou(pred.float(), target).tolist())
        images.clear()
        masks.clear()

    for sample in iter_samples(holdout):
        if sample.mask is None:
            continue
        images.append(sample.image)
        masks.append(_resize_mask(sample.mask, input_size))
        if len(images) == batch_size:
            flush()
    if images:
        flush()
    if not ious:
        raise ConfigError(f"no held-out sample in {holdout} has a mask: cannot measure the mask IoU")
    return {"mask_iou": float(np.mean(ious)), "samples": len(ious)}


def train_segnet(source, *, settings: engine.TrainSettings, input_size: int = 256, base: int = 64,
                 holdout_shards: int = 1, augment: bool = True) -> dict:
    if input_size % 32:
        raise ConfigError(f"--input-size {input_size} must be a multiple of 32 for the U-Net")
    train_part, holdout = split_holdout(source, holdout_shards)
    options = dict(source=str(source), input_size=input_size, base=base, holdout_shards=holdout_shards,
                   augment=augment, train_shards=train_part, holdout=holdout)
    signature = {"class": "UNet", "in_ch": 3, "base": base}
    run = engine.start_run(STAGE, settings, options, signature)
    try:
        loader = segnet_loader(train_part, batch_size=run.micro_batch, input_size=input_size, seed=settings.seed,
                               rank=run.dist.rank, world_size=run.dist.world_size, global_batch=run.global_batch,
                               augment=augment)
    except SampleError:
        raise
    except ValueError as e:  # too few samples for the batch, no masks at all
        raise ConfigError(f"{source}: {e}") from None
    torch.manual_seed(settings.seed)
    model = UNet(in_ch=3, base=base)
    weight_decay = run.ds_config["optimizer"]["params"].get("weight_decay", 0.0)

    def step(model_engine, batches):
        b = batches["train"]
        logits = model_engine(engine.model_inputs(model_engine, b["image"]))
        mask = b["mask"].to(logits.device)
        loss = segnet_loss(logits, mask)
        with torch.no_grad():
            iou = mask_iou(torch.sigmoid(logits.float()), mask).mean()
        return StepOutput(loss, {"train_iou": iou}, b["key"])

    def figure(module, batches, at_step):
        samples = [s for s in iter_samples(holdout) if s.mask is not None][:4]
        x = prepare_images([s.image for s in samples], input_size)
        device = next(module.parameters()).device
        pred = predict_masks(module, x.to(device, next(module.parameters()).dtype)).float().cpu()
        rows = [[im, np.repeat((_resize_mask(s.mask, input_size) * 255).astype(np.uint8)[..., None], 3, 2),
                 np.repeat((p[0].numpy() * 255).round().astype(np.uint8)[..., None], 3, 2)]
                for im, s, p in zip(engine.to_uint8(x), samples, pred)]
        return {"holdout_masks": engine.image_grid(rows)}

    summary = engine.fit(run, model, {"train": loader}, step, engine.param_groups(model, weight_decay), figure)
    if run.dist.is_main:
        result = holdout_iou(model, holdout, input_size, device=next(model.parameters()).device)
        run.log({"event": "holdout", "step": summary["steps"], **result})
        (run.run_dir / "results.json").write_text(json.dumps({"stage": STAGE, "step": summary["steps"],
                                                              "holdout": holdout, **result}, indent=1))
        summary.update(result)
    torch.distributed.barrier()
    return summary


@click.command(STAGE)
@click.option("--source", required=True, help="source shards with mask.png (a directory, file or pattern)")
@click.option("--input-size", type=int, default=256, show_default=True, help="network input side (multiple of 32)")
@click.option("--base", type=int, default=64, show_default=True, help="U-Net width of the first stage")
@click.option("--holdout-shards", type=int, default=1, show_default=True,
              help="last shard files of --source held out for the mask IoU")
@click.option("--augment/--no-augment", default=True, show_default=True)
@engine.training_options(epochs=20, warmup_epochs=1, checkpoint_every=1000, figure_every=500)
@engine.clear_errors
def cli(**options):
    """Train the segmentation U-Net on source masks; report mask IoU on held-out shards."""
    settings = engine.settings_from_options(options, STAGE, engine.default_ds_config("segnet.json", "cpu_segnet.json"))
    summary = train_segnet(options.pop("source"), settings=settings, **options)
    if "mask_iou" in summary:
        click.echo(f"held-out mask IoU {summary['mask_iou']:.4f} over {summary['samples']} samples; "
                   f"{summary['steps']} steps, {summary['steps_per_s']:.2f} steps/s -> {settings.run_dir}")
