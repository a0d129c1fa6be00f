"""Checkpoints this project did not write, as initialisation: Facebook's MAE releases, timm's MAE
ViTs and ViTPose (mmpose). Each is converted into this project's key layout, so the loaders in
trainer.pose treat every checkpoint alike.

Formats (told apart by their keys, not by file names):
    mae       {"model": {...}}: cls_token, pos_embed (1, 1+N, C), patch_embed.proj.*, blocks.N.*,
              norm.*   (mae_pretrain_vit_base.pth)
    mae_full  the same plus mask_token, decoder_embed.*, decoder_pos_embed, decoder_blocks.N.*,
              decoder_norm.*, decoder_pred.*   (mae_pretrain_vit_base_full.pth, mae_visualize_*.pth)
    timm      a bare state dict with the encoder keys above (timm's vit_*.mae), .pth or .safetensors;
              timm's fc_norm.* / head.* (classifier) are not used
    vitpose   {"state_dict": {...}} with backbone.* (no class token; backbone.last_norm.* is the
              final norm; pos_embed has 1 + N slots and ViTPose adds slot 0 to every patch slot)
              and keypoint_head.* (a 2D head, not used)
    posemae   this project's own checkpoints: a DeepSpeed run/tag directory or a .pt with
              encoder.* keys (trainer.checkpoints.read_module_state_dict)
Blocks use the same names in all of them (timm's Block): norm1, attn.qkv, attn.proj, norm2,
mlp.fc1, mlp.fc2.

Position embeddings. This encoder keeps MAE's fixed 2D sin-cos embedding by default, recomputed for
its own grid. A checkpoint whose patch slots equal the sin-cos embedding of its grid (MAE, timm's
MAE weights) needs nothing: the sin-cos of the new grid is exact, interpolating would only blur it.
A learned embedding (ViTPose, supervised ViTs) is carried over into an encoder built with
`learned_pos_embed=True` (trainer finetune does so by itself for such a checkpoint, via
`encoder_overrides`), bicubically resampled from the checkpoint's grid to the model's (timm's
resample_abs_pos_embed). ViTPose's slot 0 is folded into the patch slots first, so the patch
tokens see exactly what they saw in ViTPose; our class-token slot is then zero (MAE's convention).
The load report says which of the two was done.

Known differences worth a line in the report: ViTPose has no class token (ours stays at its
initialisation, and the attention regulariser's class-token rows come from it); ViTPose's patch
convolution pads 2 px (its patch grid starts 2 px up and left of ours); ViTPose-B trains at 256 x 192
(a 16 x 12 grid), resampled here to the model's square grid.

Public API
    read_checkpoint(path) -> Converted        any of the formats above, in our key layout
    encoder_overrides(path) -> dict           ViTEncoder kwargs a checkpoint needs ({"learned_pos_embed": True})
    init_path(init) -> Path                   --init: a run dir -> its latest tag dir; a file as it is
    is_sincos(pos_embed (1, 1+N, C), grid) -> bool
    infer_grid(num_patches) -> (gh, gw)
    Converted(path, format, state, pos_embed, grid, pos_kind, decoder_pos_kind, notes, ignored)
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trainer.checkpoints import checkpoint_tag_dir, read_module_state_dict
from trainer.errors import CheckpointError
from trainer.vit import sincos_pos_embed_2d

# Checkpoint keys of the released formats that nothing here uses, by prefix.
UNUSED_PREFIXES = {"timm": ("fc_norm.", "head.", "norm_pre."), "mae": ("fc_norm.", "head."),
                   "vitpose": ("keypoint_head.",)}
SINCOS_TOLERANCE = 1e-4   # float32 storage of a float64 sin-cos; a learned embedding is far off


@dataclass
class Converted:
    path: str
    format: str                         # mae | mae_full | timm | vitpose | posemae
    state: dict                         # our keys: encoder.*, decoder_embed.*, mask_token, decoder_*
    pos_embed: torch.Tensor | None = None           # (1, 1+N, C): class slot, then patch slots
    grid: tuple[int, int] | None = None             # the checkpoint's patch grid
    pos_kind: str | None = None                     # "sincos" | "learned" | None (not in the file)
    decoder_pos_kind: str | None = None
    notes: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)   # checkpoint keys not used, as named there


def infer_grid(num_patches: int) -> tuple[int, int]:
    """The patch grid of N position slots: square when N is a square, else the factor pair
    nearest ViTPose's 4:3 (height:width, 256 x 192 px)."""
    side = math.isqrt(num_patches)
    if side * side == num_patches:
        return side, side
    pairs = [(h, num_patches // h) for h in range(1, num_patches + 1) if num_patches % h == 0]
    return min(pairs, key=lambda hw: abs(math.log(hw[0] / hw[1]) - math.log(4 / 3)))


def is_sincos(pos_embed: torch.Tensor, grid) -> bool:
    """Are the patch slots of (1, 1+N, C) the fixed 2D sin-cos embedding of `grid`?"""
    C = pos_embed.shape[-1]
    if C % 4:
        return False
    reference = sincos_pos_embed_2d(C, grid)[1:]
    return bool((pos_embed[0, 1:].float() - reference).abs().max() < SINCOS_TOLERANCE)


def _load_file(path: str) -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint file at {path}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            return load_file(path, device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, or needs unsafe unpickling: say which file
        # Released files sometimes carry more than tensors (mmcv's 'meta', optimizer state), which
        # weights_only=True refuses to unpickle: say how to keep just the weights.
        raise CheckpointError(f"cannot read checkpoint {path} with torch.load(weights_only=True): {e}. If it is "
                              "a file you trust that holds more than tensors, save its state dict alone, e.g. "
                              "torch.save(torch.load(f, weights_only=False)['state_dict'], 'weights.pth')") from e


def _unwrap(obj) -> tuple[dict, str | None]:
    """The state dict inside a released file and the wrapper key it came in."""
    if isinstance(obj, dict):
        for wrapper in ("model", "state_dict"):
            if isinstance(obj.get(wrapper), dict) and obj[wrapper] and all(torch.is_tensor(v) for v in obj[wrapper].values()):
                return obj[wrapper], wrapper
    return obj, None


def _kind(pos: torch.Tensor, grid) -> str:
    return "sincos" if is_sincos(pos, grid) else "learned"


def read_checkpoint(path) -> Converted:
    """Read any supported checkpoint into our key layout (see the module docstring)."""
    where = os.fspath(path)
    if os.path.isdir(where):   # a run directory, its checkpoints/ or a tag directory
        tag_dir = str(checkpoint_tag_dir(where))
        return Converted(tag_dir, "posemae", read_module_state_dict(tag_dir))
    raw, wrapper = _unwrap(_load_file(where))
    if not isinstance(raw, dict) or not raw:
        raise CheckpointError(f"{where} holds no model weights")
    if "module" in raw or any(k.startswith("encoder.") for k in raw):
        return Converted(where, "posemae", read_module_state_dict(where))
    keys = list(raw)
    if any(k.startswith("backbone.") for k in keys):
        return _from_vitpose(where, raw)
    if "patch_embed.proj.weight" in raw and "blocks.0.attn.qkv.weight" in raw:
        return _from_mae_layout(where, raw, "mae" if wrapper == "model" else "timm")
    return Converted(where, "posemae", read_module_state_dict(where))   # the loaders name what is wrong


def _from_mae_layout(where: str, raw: dict, fmt: str) -> Converted:
    """MAE / timm: encoder keys at the top level, MAE's decoder beside them."""
    out = Converted(where, fmt, {})
    unused = UNUSED_PREFIXES["timm" if fmt == "timm" else "mae"]
    for key, value in raw.items():
        if key == "pos_embed":
            out.pos_embed = value.float().reshape(1, -1, value.shape[-1])
        elif key == "decoder_pos_embed":
            grid = infer_grid(value.shape[1] - 1)
            out.decoder_pos_kind = _kind(value, grid)
            out.ignored.append(key)   # ours is the fixed sin-cos of the model's grid, recomputed
        elif key.startswith(("decoder_", "mask_token")):
            out.state[key] = value
        elif key.startswith(unused):
            out.ignored.append(key)
        else:
            out.state[f"encoder.{key}"] = value
    if any(k.startswith("decoder_") for k in out.state) and fmt == "mae":
        out.format = "mae_full"
    if out.pos_embed is not None:
        out.grid = infer_grid(out.pos_embed.shape[1] - 1)
        out.pos_kind = _kind(out.pos_embed, out.grid)
    if out.decoder_pos_kind == "learned":
        out.notes.append("the checkpoint's decoder position embedding is not sin-cos; the decoder uses the "
                         "fixed sin-cos one")
    return out


def _from_vitpose(where: str, raw: dict) -> Converted:
    out = Converted(where, "vitpose", {})
    for key, value in raw.items():
        if not key.startswith("backbone."):
            out.ignored.append(key)    # keypoint_head.*: a 2D heatmap head, not ours
            continue
        name = key[len("backbone."):]
        if name == "pos_embed":
            pos = value.float().reshape(1, -1, value.shape[-1])
            # ViTPose adds slot 0 to every patch slot and has no class token: fold it in, so the
            # patch tokens get exactly ViTPose's embedding, and leave our class slot at zero.
            out.pos_embed = torch.cat([torch.zeros_like(pos[:, :1]), pos[:, 1:] + pos[:, :1]], dim=1)
        elif name.startswith("last_norm."):
            out.state["encoder.norm." + name[len("last_norm."):]] = value
        else:
            out.state[f"encoder.{name}"] = value
    if not any(k.startswith("encoder.blocks.") for k in out.state):
        raise CheckpointError(f"{where} has backbone.* keys but no ViT blocks (backbone.blocks.N.*): "
                              "not a ViTPose checkpoint")
    if out.pos_embed is not None:
        out.grid = infer_grid(out.pos_embed.shape[1] - 1)
        out.pos_kind = _kind(out.pos_embed, out.grid)
    out.notes.append("ViTPose has no class token: the class token keeps its initialisation (and the attention "
                     "regulariser's class-token rows come from it)")
    out.notes.append("ViTPose's patch embedding pads 2 px, this one does not: its weights see a grid 2 px down "
                     "and right of ViTPose's")
    return out


def init_path(init) -> Path:
    """--init as a path: a run directory or its checkpoints/ -> the latest tag directory; a file
    (a released checkpoint, or a .pt) as it is. A missing path is one clear error naming it."""
    path = Path(init)
    if path.is_file():
        return path
    return checkpoint_tag_dir(path)   # FileNotFoundError naming the path when it is neither


def encoder_overrides(path) -> dict:
    """ViTEncoder kwargs that a checkpoint needs beyond the named size: a learned position
    embedding (ViTPose, supervised ViTs, or our own run that started from one)."""
    if path is None or str(path) == "none":
        return {}
    converted = read_checkpoint(path)
    learned = converted.pos_kind == "learned" or "encoder.pos_embed" in converted.state
    return {"learned_pos_embed": True} if learned else {}
