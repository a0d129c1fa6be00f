"""Stage 2 (docs/method.md): 3D-heatmap fine-tuning from a pre-training checkpoint (or from scratch),
with the attention regulariser on target images.

Per optimizer step: a labelled source batch gives L_pose (Eq. 5) on the K x Dz x H/4 x W/4
heatmaps; a label-free target batch gives L_AR (Eq. 6), the squared difference between the
class-token attention rows of the trained encoder E and of a frozen copy A of the pre-trained
encoder, per block; L = L_pose + lambda L_AR (Eq. 7). A lives outside the DeepSpeed engine (not
optimised, not checkpointed): a resumed run rebuilds it from --init.

Switches: --init none (scratch: no A, so it needs --no-ar or --source-only), --no-ar (lambda 0,
target not read), --source-only (no target data at all), --layer-decay (ViTPose 0.75),
--drop-path (ViTPose-B 0.3). Defaults follow the source's joint order: hands (hand21) 50 epochs,
lambda 100, depth range 400 mm; bodies (h36m17) 100 epochs, lambda 10, 2000 mm. Samples without
3D labels (has_depth False) get zero weight: their depth bin is unknown.

    trainer finetune --init runs/pre --source shards/freihand/train --target shards/rhd/train --run-dir runs/ft
    deepspeed --num_gpus 8 --module trainer finetune --init runs/pre ... --lambda-ar 100

Figures: attention_step*.png (target images with E's and A's last-block class-token attention and
E's mean over blocks) and pose_step*.png (source images, ground-truth joints green, decoded
predictions red).

Public API
    finetune(source, target, *, settings, init, model="base", input_size=256, patch_size=16,
             depth_bins=64, head_channels=256, deconv_layers=2, lambda_ar=None, use_ar=True, source_only=False,
             layer_decay=None, drop_path=0.0, depth_range_mm=None, ar_reduction="sum_mean",
             sigma=2.0, augment=True, grad_norms=False, freeze_encoder=False) -> summary dict
    pose_recipe(joint_order) -> {"epochs", "lambda_ar", "depth_range_mm", "ds_config"}
"""
from __future__ import annotations

import click
import torch
from PIL import Image, ImageDraw

from shards.pipelines import finetune_loader, target_loader
from shards.pipelines.shardset import ShardSet
from shards.joints import pose_kind
from shards.schema import JOINT_ORDERS, SampleError
from trainer import checkpoints, engine
from trainer.baselines import mean_pose
from trainer.engine import StepOutput
from trainer.errors import ConfigError
from trainer.heatmaps import DEFAULT_SIGMA, DEPTH_RANGE_MM, decode_heatmaps, joints_to_voxels, pose_loss, voxels_to_joints
from trainer.official_weights import encoder_overrides, init_path
from trainer.errors import CheckpointError
from trainer.pose import (LAMBDA_AR, POSE_STAGE, FrozenAttentionNet, PoseModel, attention_regularisation,
                          finetune_loss, load_pretrained)
from trainer.report import overlay_attention
from trainer.vit import VIT_SIZES, vit_config

STAGE = POSE_STAGE
EPOCHS = {"hand": 50, "body": 100}
RECIPES = {"hand": "finetune_hands.json", "body": "finetune_bodies.json"}


def pose_recipe(joint_order: str) -> dict:
    """The paper's fine-tuning defaults for hands or bodies."""
    try:
        kind = pose_kind(joint_order)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return {"epochs": EPOCHS[kind], "lambda_ar": LAMBDA_AR[kind], "depth_range_mm": DEPTH_RANGE_MM[kind],
            "ds_config": engine.default_ds_config(RECIPES[kind], "cpu_finetune.json")}


def source_joint_order(source) -> str:
    return ShardSet.at(source).first_meta().get("joint_order")


def attention_figure(module: PoseModel, frozen: FrozenAttentionNet | None, images: torch.Tensor, rows: int = 4):
    """Per image: the image, E's last-block attention, A's last-block attention, E's mean over blocks."""
    param = next(module.parameters())
    x = images[:rows].to(param.device, param.dtype)
    maps = module.cls_attention(x).float().cpu().numpy()
    frozen_maps = frozen(x).float().cpu().numpy() if frozen is not None else None
    h, w = module.encoder.patch_embed.grid_size
    grid = []
    for i, image in enumerate(engine.to_uint8(x)):
        row = [image, overlay_attention(image, maps[i, -1].reshape(h, w))]
        if frozen_maps is not None:
            row.append(overlay_attention(image, frozen_maps[i, -1].reshape(h, w)))
        row.append(overlay_attention(image, maps[i].mean(0).reshape(h, w)))
        grid.append(row)
    return engine.image_grid(grid)


def pose_figure(module: PoseModel, batch: dict, input_size: int, depth_range_mm: float, rows: int = 4):
    param = next(module.parameters())
    x = batch["image"][:rows].to(param.device, param.dtype)
    heatmaps = module(x).float()
    pred, _ = voxels_to_joints(decode_heatmaps(heatmaps), input_size, heatmaps.shape[-3:], depth_range_mm)
    tiles = []
    for image, gt, p, vis in zip(engine.to_uint8(x), batch["joints2d"][:rows].float(), pred.cpu(),
                                 batch["visible"][:rows]):
        tile = Image.fromarray(image)
        draw = ImageDraw.Draw(tile)
        for (gu, gv), (pu, pv), v in zip(gt.tolist(), p.tolist(), vis.tolist()):
            if v:
                draw.ellipse([gu - 1.5, gv - 1.5, gu + 1.5, gv + 1.5], fill=(0, 220, 0))
            draw.ellipse([pu - 1.5, pv - 1.5, pu + 1.5, pv + 1.5], outline=(255, 0, 0))
        tiles.append(tile)
    return engine.image_grid([tiles])


def encoder_gradient_norms(encoder: torch.nn.Module, pose_term: torch.Tensor, ar_term: torch.Tensor) -> dict:
    """Diagnostics: the L2 norms of the gradients that L_pose and lambda * L_AR send into the shared
    encoder, and their cosine (negative: the regulariser pulls against the pose loss). Two extra
    backward passes per step, so off by default (--log-grad-norms)."""
    params = [p for p in encoder.parameters() if p.requires_grad]
    g_pose = torch.autograd.grad(pose_term, params, retain_graph=True, allow_unused=True)
    g_ar = torch.autograd.grad(ar_term, params, retain_graph=True, allow_unused=True)
    flat_pose = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten().float() for g, p in zip(g_pose, params)])
    flat_ar = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten().float() for g, p in zip(g_ar, params)])
    pose_norm, ar_norm = flat_pose.norm(), flat_ar.norm()
    cosine = (flat_pose @ flat_ar) / (pose_norm * ar_norm).clamp_min(1e-30)
    return {"grad_norm_pose": pose_norm.detach(), "grad_norm_ar": ar_norm.detach(), "grad_cosine_pose_ar": cosine.detach()}


def finetune(source, target, *, settings: engine.TrainSettings, init: str, model: str = "base",
             input_size: int = 256, patch_size: int = 16, depth_bins: int = 64, head_channels: int = 256,
             deconv_layers: int = 2,
             lambda_ar: float | None = None, use_ar: bool = True, source_only: bool = False,
             layer_decay: float | None = None, drop_path: float = 0.0, depth_range_mm: float | None = None,
             ar_reduction: str = "sum_mean", sigma: float = DEFAULT_SIGMA, augment: bool = True,
             grad_norms: bool = False, freeze_encoder: bool = False) -> dict:
    joint_order = source_joint_order(source)
    recipe = pose_recipe(joint_order)
    use_ar = use_ar and not source_only
    lambda_ar = recipe["lambda_ar"] if lambda_ar is None else lambda_ar
    depth_range_mm = recipe["depth_range_mm"] if depth_range_mm is None else depth_range_mm
    _check_options(target=target, init=init, use_ar=use_ar, freeze_encoder=freeze_encoder, input_size=input_size,
                   patch_size=patch_size)
    try:
        encoder = vit_config(model, img_size=input_size, patch_size=patch_size)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if init != "none":  # e.g. ViTPose's learned position embedding (trainer.official_weights)
        encoder.update(encoder_overrides(init_path(init)))
    num_joints = len(JOINT_ORDERS[joint_order])
    signature = {"class": "PoseModel", "encoder": encoder, "num_joints": num_joints, "depth_bins": depth_bins,
                 "head_channels": head_channels, "deconv_layers": deconv_layers}
    options = dict(source=str(source), target=str(target) if use_ar else None, init=str(init), model=model,
                   input_size=input_size, patch_size=patch_size, depth_bins=depth_bins, head_channels=head_channels,
                   deconv_layers=deconv_layers, joint_order=joint_order, lambda_ar=lambda_ar if use_ar else 0.0, use_ar=use_ar,
                   source_only=source_only, layer_decay=layer_decay, drop_path=drop_path,
                   depth_range_mm=depth_range_mm, ar_reduction=ar_reduction, sigma=sigma, augment=augment,
                   # the constant-prediction baseline `trainer evaluate` scores next to this model
                   grad_norms=grad_norms, freeze_encoder=freeze_encoder, mean_pose=mean_pose(source, settings.skip_bad_samples).to_dict())
    run = engine.start_run(STAGE, settings, options, signature)

    torch.manual_seed(settings.seed)
    pose = PoseModel({**encoder, "drop_path_rate": drop_path}, num_joints, depth_bins, head_channels, deconv_layers)
    frozen = _initialise(run, pose, init, use_ar)
    if freeze_encoder:   # a probe of the pre-trained features: only the heatmap head learns
        pose.encoder.requires_grad_(False)

    common = dict(batch_size=run.micro_batch, input_size=input_size, seed=settings.seed, rank=run.dist.rank,
                  world_size=run.dist.world_size, global_batch=run.global_batch, augment=augment)
    try:
        loaders = {"source": finetune_loader(source, **common)}
        if use_ar:
            loaders["target"] = target_loader(target, **common)
    except SampleError:
        raise
    except ValueError as e:
        raise ConfigError(f"fine-tuning data: {e}") from None
    weight_decay = run.ds_config["optimizer"]["params"].get("weight_decay", 0.0)
    step = pose_step(frozen, input_size=input_size, depth_range_mm=depth_range_mm, sigma=sigma, use_ar=use_ar,
                     lambda_ar=lambda_ar, ar_reduction=ar_reduction, grad_norms=grad_norms)

    def figure(module, batches, at_step):
        figures = {"pose": pose_figure(module, batches["source"], input_size, depth_range_mm)}
        attention_images = batches["target"]["image"] if use_ar else batches["source"]["image"]
        if frozen is not None:
            frozen.to(next(module.parameters()).device, next(module.parameters()).dtype)
        figures["attention"] = attention_figure(module, frozen, attention_images)
        return figures

    groups = engine.param_groups(pose, weight_decay, layer_decay)
    return engine.fit(run, pose, loaders, step, groups, figure)


def _check_options(*, target, init: str, use_ar: bool, freeze_encoder: bool, input_size: int, patch_size: int) -> None:
    if use_ar and target is None:
        raise ConfigError("the attention regulariser needs --target shards (or pass --no-ar / --source-only)")
    if use_ar and init == "none":
        raise ConfigError("--init none has no pre-trained encoder to copy into the frozen attention network: "
                          "pass --no-ar (or --source-only) to train from scratch")
    if freeze_encoder and use_ar:
        raise ConfigError("--freeze-encoder trains the head alone; the attention regulariser acts on the encoder: "
                          "pass --no-ar (or --source-only)")
    if input_size % patch_size:
        raise ConfigError(f"--input-size {input_size} is not a multiple of the patch size {patch_size}")


def _initialise(run: engine.Run, pose: PoseModel, init: str, use_ar: bool) -> FrozenAttentionNet | None:
    """Load --init into `pose` (and, with the regulariser, into the frozen attention network A,
    which is returned); `init` "none" leaves the model at its random initialisation."""
    if init == "none":
        if run.dist.is_main:
            run.log({"event": "init", "checkpoint": None})
        return None
    tag_dir = init_path(init)   # a run/tag directory, or a released MAE / timm / ViTPose file
    if (tag_dir / checkpoints.META_FILE).is_file():
        meta = checkpoints.read_checkpoint_meta(tag_dir)
        if meta["stage"] not in ("pretrain", STAGE):
            raise CheckpointError(f"--init {tag_dir} is a {meta['stage']} checkpoint of {meta['model']}: "
                                  "fine-tuning starts from a pre-training (or pose) checkpoint")
    frozen = FrozenAttentionNet(pose.encoder) if use_ar else None
    report = load_pretrained(pose, tag_dir, frozen=frozen)
    run.log({"event": "init", "checkpoint": str(tag_dir), "report": str(report)})
    return frozen


def pose_step(frozen: FrozenAttentionNet | None, *, input_size: int, depth_range_mm: float, sigma: float,
              use_ar: bool, lambda_ar: float, ar_reduction: str, grad_norms: bool):
    """The step_fn of engine.fit: Eq. 7's loss on a source batch (and a target batch with the
    regulariser)."""
    def step(model_engine, batches):
        b = batches["source"]
        heatmaps = model_engine(engine.model_inputs(model_engine, b["image"]))
        device = heatmaps.device
        uvz = joints_to_voxels(b["joints2d"].to(device).float(), b["depth_rel_mm"].to(device).float(),
                               input_size, tuple(heatmaps.shape[-3:]), depth_range_mm)
        visible = b["visible"].to(device).float() * b["has_depth"].to(device).float()[:, None]
        l_pose = pose_loss(heatmaps, uvz, visible, sigma)
        metrics = {"pose_loss": l_pose.detach()}
        l_ar = None
        if use_ar:
            target_images = engine.model_inputs(model_engine, batches["target"]["image"])
            frozen.to(device, target_images.dtype)
            l_ar = attention_regularisation(model_engine.module.cls_attention(target_images), frozen(target_images),
                                            ar_reduction)
            metrics["ar_loss"] = l_ar.detach()
            if grad_norms:   # L_pose again through the bare module: DeepSpeed's engine output refuses autograd.grad
                again = pose_loss(model_engine.module(engine.model_inputs(model_engine, b["image"])), uvz, visible, sigma)
                metrics.update(encoder_gradient_norms(model_engine.module.encoder, again, lambda_ar * l_ar))
        keys = list(b["key"]) + (list(batches["target"]["key"]) if use_ar else [])
        return StepOutput(finetune_loss(l_pose, l_ar, lambda_ar), metrics, keys)
    return step


@click.command(STAGE)
@click.option("--source", required=True, help="labelled source shards")
@click.option("--target", default=None, help="target shards (images only) for the attention regulariser")
@click.option("--init", required=True, help="pre-training run directory or checkpoint, a released MAE / timm "
              "(.pth, .safetensors) / ViTPose (mmpose .pth) file, or 'none' (scratch)")
@click.option("--model", type=click.Choice(sorted(VIT_SIZES)), default="base", show_default=True)
@click.option("--input-size", type=int, default=256, show_default=True)
@click.option("--patch-size", type=int, default=16, show_default=True)
@click.option("--depth-bins", type=int, default=64, show_default=True, help="Dz, heatmap depth bins")
@click.option("--head-channels", type=int, default=256, show_default=True)
@click.option("--deconv-layers", type=int, default=2, show_default=True,
              help="head upsampling steps (ViTPose: 2, heatmap stride 4 at 16 px patches; 1 keeps stride 4 at 8 px)")
@click.option("--lambda-ar", type=float, default=None, help="L_AR weight (default 100 hands, 10 bodies)")
@click.option("--no-ar", is_flag=True, help="no attention regulariser (the target is not read)")
@click.option("--source-only", is_flag=True, help="source data only (no target, no regulariser)")
@click.option("--layer-decay", type=float, default=None, help="layer-wise lr decay (ViTPose: 0.75); off by default")
@click.option("--drop-path", type=float, default=0.0, show_default=True, help="stochastic depth (ViTPose-B: 0.3)")
@click.option("--depth-range-mm", type=float, default=None, help="depth the bins span (default 400 hands, 2000 bodies)")
@click.option("--ar-reduction", type=click.Choice(["sum_mean", "mean"]), default="sum_mean", show_default=True)
@click.option("--sigma", type=float, default=DEFAULT_SIGMA, show_default=True, help="Gaussian sigma in voxels")
@click.option("--augment/--no-augment", default=True, show_default=True)
@click.option("--log-grad-norms", "grad_norms", is_flag=True,
              help="log the encoder gradient norms of L_pose and lambda L_AR and their cosine (2 extra backward passes)")
@click.option("--freeze-encoder", is_flag=True,
              help="train the heatmap head on a frozen encoder: a probe of how useful the pre-trained features are")
@engine.training_options(epochs=None, warmup_epochs=1, checkpoint_every=1000, figure_every=1000)
@engine.clear_errors
def cli(**options):
    """3D-heatmap fine-tuning with the attention regulariser (Eq. 4-7)."""
    recipe = pose_recipe(source_joint_order(options["source"]))
    if options["epochs"] is None:
        options["epochs"] = recipe["epochs"]
    settings = engine.settings_from_options(options, STAGE, recipe["ds_config"])
    summary = finetune(options.pop("source"), options.pop("target"), settings=settings,
                       use_ar=not options.pop("no_ar"), **options)
    click.echo(f"{summary['steps']} steps, {summary['steps_per_s']:.2f} steps/s, peak RSS "
               f"{summary['peak_rss_mib']:.0f} MiB -> {settings.run_dir}")
