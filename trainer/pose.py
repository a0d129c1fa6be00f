"""3D pose model (docs/method.md Stage 2, paper Table 7) and the attention regulariser (Eq. 6-7).

PoseModel = ViT encoder E + ViTPose's classic head: the class token is dropped for the head, the
N patch tokens are reshaped to C x h x w, 2 x [ConvTranspose 4x4 s2 (256 ch, no bias) + BN +
ReLU], then a 1x1 conv to K * Dz channels viewed as (K, Dz, 4h, 4w): a 3D heatmap per joint,
64 x 64 x 64 for a 256 x 256 input.

The attention network A is a frozen copy of the pre-trained E (FrozenAttentionNet): a plain
module kept outside the DeepSpeed engine, requires_grad False, always in eval mode. Eq. 6 compares
per-block class-token attention rows of E and A on the same target images:
    L_AR = mean over batch and blocks of sum_i (M^E_{b,i} - M^A_{b,i})^2     (reduction "sum_mean")
and Eq. 7: L = L_pose + lambda * L_AR, lambda 100 for hands, 10 for bodies.

Public API
    PoseModel(encoder_kwargs: dict, num_joints: int, depth_bins=64, head_channels=256, deconv_layers=2)
        .forward(images) -> heatmaps (B, K, Dz, 2^deconv_layers h, 2^deconv_layers w) for an h x w token grid
        .forward_with_cls_attention(images) -> (heatmaps, attn (B, depth, N))
        .cls_attention(images) -> attn (B, depth, N)   encoder only (target images)
        .group_matcher(coarse=False)   for timm.optim.param_groups_layer_decay
    FrozenAttentionNet(encoder)   .forward(images) -> attn (B, depth, N), no grad
    attention_regularisation(maps, frozen_maps, reduction="sum_mean" | "mean" | "none")
    finetune_loss(pose_loss, ar_loss, lambda_ar) -> pose_loss + lambda_ar * ar_loss
    LAMBDA_AR = {"hand": 100.0, "body": 10.0}
    load_pretrained(model, checkpoint, frozen=None, allow_missing=False) -> LoadReport
        checkpoint: this project's run/tag directory or .pt, or a released MAE / timm / ViTPose
        file (trainer.official_weights); the report says what was loaded, ignored, and what was
        done with the position embedding
    load_mae_init(mae, checkpoint) -> LoadReport      trainer pretrain --init (decoder included)
    load_pose_model(path) -> (PoseModel, meta)   a finetune run/checkpoint, ready for evaluation;
        meta["options"] holds input_size, depth_range_mm, joint_order
    (reading checkpoint files, and CheckpointError: trainer.checkpoints)
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from trainer.checkpoints import checkpoint_tag_dir, read_checkpoint_meta, read_module_state_dict
from trainer.errors import CheckpointError
from trainer.vit import ViTEncoder, sincos_pos_embed_2d

LAMBDA_AR = {"hand": 100.0, "body": 10.0}
# Keys of a pre-training checkpoint that the pose model does not use (MAE's decoder), and of a
# pose checkpoint that a new pose model re-initialises (the head).
PRETRAIN_ONLY_PREFIXES = ("decoder_", "mask_token", "head.")


class PoseModel(nn.Module):
    def __init__(self, encoder_kwargs: dict, num_joints: int, depth_bins: int = 64, head_channels: int = 256,
                 deconv_layers: int = 2):
        super().__init__()
        self.encoder = ViTEncoder(**encoder_kwargs)
        self.num_joints, self.depth_bins = num_joints, depth_bins
        # ViTPose's classic head has 2 deconvolutions: heatmaps at 4x the token grid, stride 4 for
        # 16 px patches. With 8 px patches (the small CPU configs), 1 keeps that stride of 4.
        if deconv_layers < 1:
            raise ValueError(f"the head needs at least one deconvolution, got deconv_layers={deconv_layers}")
        layers, channels = [], self.encoder.embed_dim
        for _ in range(deconv_layers):
            layers += [nn.ConvTranspose2d(channels, head_channels, 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(head_channels), nn.ReLU(inplace=True)]
            channels = head_channels
        self.head = nn.Sequential(*layers, nn.Conv2d(head_channels, num_joints * depth_bins, 1))
        # ViTPose's head initialisation: small deconv/conv weights, unit BN.
        for m in self.head.modules():
            if isinstance(m, (nn.ConvTranspose2d, nn.Conv2d)):
                nn.init.normal_(m.weight, std=0.001)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def heatmaps_from_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 1+N, C) encoder tokens -> (B, K, Dz, 4h, 4w); the class token is not used."""
        h, w = self.encoder.patch_embed.grid_size
        features = tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], -1, h, w)
        out = self.head(features)
        return out.view(out.shape[0], self.num_joints, self.depth_bins, out.shape[-2], out.shape[-1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.heatmaps_from_tokens(self.encoder(images))

    def forward_with_cls_attention(self, images: torch.Tensor):
        tokens, attn = self.encoder.forward_with_cls_attention(images)
        return self.heatmaps_from_tokens(tokens), attn

    def cls_attention(self, images: torch.Tensor) -> torch.Tensor:
        """M^E on target images: per-block class-token rows, no head."""
        return self.encoder.forward_with_cls_attention(images)[1]

    def group_matcher(self, coarse: bool = False) -> dict:
        """ViTPose's layer decay with timm.optim.param_groups_layer_decay: embeddings at layer 0
        (scale rate^(depth+1)), block i at i + 1 (rate^(depth-i)), the encoder's final norm and
        the head together on top (scale 1)."""
        return dict(stem=r"^encoder\.(?:cls_token|pos_embed|patch_embed)",
                    blocks=[(r"^encoder\.blocks\.(\d+)", None), (r"^encoder\.norm|^head\.", (100000,))])

    def no_weight_decay(self) -> set:
        return {"encoder.cls_token"}


class FrozenAttentionNet(nn.Module):
    """A: a frozen copy of the pre-trained encoder; returns M^A (B, depth, N), never updated."""

    def __init__(self, encoder: ViTEncoder):
        super().__init__()
        self.encoder = copy.deepcopy(encoder)
        self.encoder.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True):
        return super().train(False)  # eval always: no drop path, whatever the caller's mode

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.forward_with_cls_attention(images)[1]


def attention_regularisation(maps: torch.Tensor, frozen_maps: torch.Tensor, reduction: str = "sum_mean"):
    """Eq. 6 between M^E and M^A, both (B, depth, N). reduction:
    "sum_mean" (default): squared L2 over patches per block, mean over blocks and batch;
    "mean": mean over every entry (= sum_mean / N); "none": the (B, depth) squared L2 norms."""
    if maps.shape != frozen_maps.shape:
        raise ValueError(f"attention maps {tuple(maps.shape)} and frozen maps {tuple(frozen_maps.shape)} differ")
    squared = (maps.float() - frozen_maps.detach().float()) ** 2
    if reduction == "sum_mean":
        return squared.sum(dim=-1).mean()
    if reduction == "mean":
        return squared.mean()
    if reduction == "none":
        return squared.sum(dim=-1)
    raise ValueError(f"unknown reduction {reduction!r}; choose 'sum_mean', 'mean' or 'none'")


def finetune_loss(pose_loss: torch.Tensor, ar_loss: torch.Tensor | None, lambda_ar: float) -> torch.Tensor:
    """Eq. 7. ar_loss None (source only, no target batch) gives L_pose alone."""
    return pose_loss if ar_loss is None else pose_loss + lambda_ar * ar_loss


# -- pre-trained weights ---------------------------------------------------------------------------
@dataclass
class LoadReport:
    checkpoint: str
    format: str = "posemae"                               # trainer.official_weights formats
    loaded: list[str] = field(default_factory=list)      # tensors copied (encoder.*, and the decoder's for MAE)
    missing: list[str] = field(default_factory=list)     # model tensors the checkpoint lacks
    ignored: list[str] = field(default_factory=list)     # pre-training-only or foreign heads, not used
    unexpected: list[str] = field(default_factory=list)  # anything else in the checkpoint
    position: str = ""                                   # what was done with the position embedding
    notes: list[str] = field(default_factory=list)

    def __str__(self):
        encoder = sum(k.startswith("encoder.") for k in self.loaded)
        decoder = f" and {len(self.loaded) - encoder} decoder tensors" if len(self.loaded) > encoder else ""
        lines = [f"loaded {encoder} encoder tensors{decoder} from {self.checkpoint} [{self.format}]"]
        if self.position:
            lines.append(f"  position embedding: {self.position}")
        for name, keys in (("missing (left at initialisation)", self.missing),
                           ("ignored (not used by this model)", self.ignored), ("unexpected", self.unexpected)):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
                lines.append(f"  {name}: {shown}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _grid_text(grid) -> str:
    return f"{grid[0]}x{grid[1]}"


def _position_embedding(encoder: ViTEncoder, converted, encoder_state: dict) -> str:
    """Put the checkpoint's position embedding where this encoder wants it (see
    trainer.official_weights); returns what was done, for the load report."""
    from timm.layers import resample_abs_pos_embed
    grid = tuple(encoder.patch_embed.grid_size)
    if converted.pos_embed is None:   # our own checkpoints: a learned one is among the encoder keys
        if encoder.learned_pos_embed:
            return "learned, loaded from the checkpoint" if "pos_embed" in encoder_state else "learned, not in the checkpoint"
        return f"fixed 2D sin-cos for the {_grid_text(grid)} grid"
    source = converted.grid
    if not encoder.learned_pos_embed:
        if converted.pos_kind == "learned":
            raise CheckpointError(
                f"{converted.path} has a learned position embedding ({converted.format}); this encoder keeps MAE's "
                "fixed sin-cos one. trainer finetune builds a learned one for such checkpoints by itself; "
                "pre-training keeps the fixed sin-cos embedding, so start it from an MAE checkpoint")
        return (f"fixed 2D sin-cos, unchanged: the checkpoint's {_grid_text(source)} embedding is the sin-cos one, "
                f"recomputed for this model's {_grid_text(grid)} grid (not interpolated)")
    if converted.pos_kind == "sincos":
        encoder_state["pos_embed"] = sincos_pos_embed_2d(converted.pos_embed.shape[-1], grid)[None]
        return (f"learned, initialised to the sin-cos embedding of the {_grid_text(grid)} grid (the checkpoint's "
                f"{_grid_text(source)} one is sin-cos)")
    if source == grid:
        encoder_state["pos_embed"] = converted.pos_embed
        return f"learned, loaded as is ({_grid_text(grid)})"
    encoder_state["pos_embed"] = resample_abs_pos_embed(converted.pos_embed, new_size=list(grid), old_size=list(source),
                                                        num_prefix_tokens=1)
    return f"learned, interpolated (bicubic) from the checkpoint's {_grid_text(source)} grid to {_grid_text(grid)}"


def _encoder_state(encoder: ViTEncoder, converted, report: LoadReport, allow_missing: bool,
                   other_prefixes=PRETRAIN_ONLY_PREFIXES) -> dict:
    """The checkpoint's encoder tensors in encoder.state_dict() naming, checked against the
    encoder: one CheckpointError naming the file for another model (no encoder weights, other
    widths, other blocks, tensors missing unless allow_missing)."""
    where = converted.path
    encoder_state = {}
    for key, value in converted.state.items():
        if key.startswith("encoder."):
            encoder_state[key[len("encoder."):]] = value
        elif key.startswith(other_prefixes):
            report.ignored.append(key)
        else:
            report.unexpected.append(key)
    if not encoder_state:
        raise CheckpointError(f"{where} has no 'encoder.*' weights: not a pre-training or pose checkpoint, nor "
                              "a released MAE ({'model': ...}), timm ViT or ViTPose ({'state_dict': backbone.*}) "
                              f"file (first keys: {', '.join(list(converted.state)[:5])})")
    report.position = _position_embedding(encoder, converted, encoder_state)

    expected = encoder.state_dict()
    foreign = sorted(set(encoder_state) - set(expected))
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                  for k, v in encoder_state.items() if k in expected and v.shape != expected[k].shape]
    absent = set(expected) - set(encoder_state)
    report.missing = sorted(f"encoder.{k}" for k in absent)
    # A ViTPose backbone has no class token by design: not a sign of another model.
    required = absent - ({"cls_token"} if converted.format == "vitpose" else set())
    problems = []
    if mismatched:
        problems.append("shape mismatch: " + "; ".join(mismatched[:6]))
    if foreign:
        problems.append("encoder tensors this model does not have: " + ", ".join(foreign[:6]))
    if required and not allow_missing:
        problems.append("encoder tensors missing from the checkpoint: "
                        + ", ".join(sorted(f"encoder.{k}" for k in required)[:6]))
    if problems:
        width = encoder_state["patch_embed.proj.weight"].shape[0] if "patch_embed.proj.weight" in encoder_state else "?"
        depth = len({k.split(".")[1] for k in encoder_state if k.startswith("blocks.")})
        raise CheckpointError(
            f"{where} does not fit this encoder (checkpoint: width {width}, {depth} blocks; "
            f"model: width {encoder.embed_dim}, {encoder.depth} blocks): " + " | ".join(problems))
    return encoder_state


def load_pretrained(model: PoseModel, checkpoint, frozen: FrozenAttentionNet | None = None,
                    allow_missing: bool = False) -> LoadReport:
    """Copy the encoder weights of a checkpoint into model.encoder and, when given, into the
    frozen attention network: this project's pre-training (MAE) or pose checkpoints, or the
    released MAE, timm and ViTPose files (trainer.official_weights converts them; position
    embeddings as described there). Decoders and foreign heads are ignored. Raises
    CheckpointError naming the file when the checkpoint is of another model: no encoder weights,
    encoder tensors of other shapes or other blocks (another ViT size), or encoder tensors
    missing (unless allow_missing)."""
    from trainer.official_weights import read_checkpoint
    converted = read_checkpoint(checkpoint)
    report = LoadReport(checkpoint=converted.path, format=converted.format, ignored=list(converted.ignored),
                        notes=list(converted.notes))
    encoder_state = _encoder_state(model.encoder, converted, report, allow_missing)
    model.encoder.load_state_dict(encoder_state, strict=False)
    if frozen is not None:
        frozen.encoder.load_state_dict(model.encoder.state_dict())
    report.loaded = sorted(f"encoder.{k}" for k in encoder_state)
    return report


# MaskedAutoencoder keys outside the encoder: the decoder (its position embedding is a fixed buffer).
DECODER_PREFIXES = ("decoder_", "mask_token")


def load_mae_init(mae, checkpoint) -> LoadReport:
    """`trainer pretrain --init`: continue pre-training from a checkpoint (Facebook's MAE
    releases, timm's MAE weights, or this project's own pre-training). The encoder as in
    load_pretrained; the decoder too when the checkpoint has one (MAE's *_full and visualize
    files), which must then match --decoder-dim/--decoder-depth exactly; without one the decoder
    starts from its initialisation (the report says so)."""
    from trainer.official_weights import read_checkpoint
    converted = read_checkpoint(checkpoint)
    report = LoadReport(checkpoint=converted.path, format=converted.format, ignored=list(converted.ignored),
                        notes=list(converted.notes))
    encoder_state = _encoder_state(mae.encoder, converted, report, allow_missing=False,
                                   other_prefixes=DECODER_PREFIXES + ("head.",))
    decoder_state = {k: v for k, v in converted.state.items() if k.startswith(DECODER_PREFIXES)}
    report.ignored = [k for k in report.ignored if k not in decoder_state]
    expected = {k: v for k, v in mae.state_dict().items() if not k.startswith("encoder.")}
    if decoder_state:
        depth = len({k.split(".")[1] for k in decoder_state if k.startswith("decoder_blocks.")})
        width = decoder_state["decoder_embed.weight"].shape[0] if "decoder_embed.weight" in decoder_state else "?"
        wrong = sorted(set(decoder_state) ^ set(expected)) + [
            k for k in decoder_state if k in expected and decoder_state[k].shape != expected[k].shape]
        if wrong:
            raise CheckpointError(
                f"{converted.path}: its decoder (width {width}, {depth} blocks) does not fit this model's "
                f"(width {mae.decoder_embed.out_features}, {len(mae.decoder_blocks)} blocks): pass "
                f"--decoder-dim {width} --decoder-depth {depth} (MAE's released decoders have 16 heads) "
                f"[{', '.join(wrong[:4])}]")
        report.notes.append(f"decoder loaded: width {width}, {depth} blocks; its position embedding is the fixed "
                            "sin-cos one of this model's grid")
    else:
        report.missing += sorted(expected)
        report.notes.append("no decoder in the checkpoint: the decoder starts from its initialisation")
    mae.encoder.load_state_dict(encoder_state, strict=False)
    if decoder_state:
        mae.load_state_dict(decoder_state, strict=False)
    report.loaded = sorted([f"encoder.{k}" for k in encoder_state] + list(decoder_state))
    return report


# -- fine-tuned models --------------------------------------------------------------------------
POSE_STAGE = "finetune"     # the trainer stage whose checkpoints hold a PoseModel


def load_pose_model(path) -> tuple[PoseModel, dict]:
    """The PoseModel of a `trainer finetune` run (directory, checkpoints/ or tag), in eval mode."""
    tag_dir = checkpoint_tag_dir(path)
    meta = read_checkpoint_meta(tag_dir)
    if meta.get("stage") != POSE_STAGE:
        raise CheckpointError(f"{tag_dir} is a {meta.get('stage')} checkpoint, not a pose model (`trainer finetune`)")
    m = meta["model"]
    model = PoseModel(m["encoder"], m["num_joints"], m["depth_bins"], m["head_channels"], m.get("deconv_layers", 2))
    try:
        model.load_state_dict(read_module_state_dict(tag_dir))
    except RuntimeError as e:
        raise CheckpointError(f"{tag_dir} does not fit {m}: {e}") from None
    return model.eval(), {**meta, "checkpoint": str(tag_dir)}
