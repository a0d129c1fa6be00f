"""Stage 0, part 2 (docs/method.md "Stage 0: masks"): run a trained segmentation network over image
shards (a target set, or a source set without masks) and write new shards with the predicted
`mask.png` added to every sample.

Every other member is copied byte for byte (the JPEG is not re-encoded; joints, meta unchanged).
The mask is predicted at the network's input size, resized bilinearly back to the stored crop and
thresholded to 0/255 (or stored soft, p x 255, with --soft). Samples that already carry a
mask.png keep it unless --replace-existing. The output's manifest.json carries the input's
dataset fields plus a "masks" record: the checkpoint, its step, threshold, input size, counts.
Shards are written by shards.writer.ShardWriter, so a killed run resumes after its last complete
shard. Under the deepspeed launcher the ranks share the prediction (batch i goes to rank
i mod world) and rank 0 writes; the output does not depend on the number of ranks.

    trainer masks --model runs/seg --in shards/rhd/train --out shards/rhd-masked/train

Public API
    predict_mask_shards(model, in_path, out_dir, *, threshold=0.5, batch_size=16,
                        replace_existing=False, soft=False, shard_count=None) -> manifest dict
    load_segnet(model_path) -> (UNet, meta)     a segnet run directory or checkpoint
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from shards.device import cuda_available
from shards.progress import progress
from shards.reader import iter_samples, read_manifest
from shards.schema import EXT_IMAGE, EXT_MASK, SampleError, encode_png
from shards.writer import ShardWriter
from trainer import checkpoints, engine
from trainer.errors import ConfigError
from trainer.checkpoints import read_module_state_dict
from trainer.errors import CheckpointError
from trainer.segnet import prepare_images
from trainer.unet import UNet, predict_masks

# Manifest fields ShardWriter writes itself; everything else in the input manifest is carried over.
WRITER_FIELDS = {"schema_version", "samples", "num_shards", "shards", "skipped", "command"}


def load_segnet(model_path) -> tuple[UNet, dict]:
    """The U-Net of a `trainer segnet` run (directory, checkpoints/ or a tag directory)."""
    tag_dir = checkpoints.checkpoint_tag_dir(model_path)
    meta = checkpoints.read_checkpoint_meta(tag_dir)
    if meta.get("stage") != "segnet":
        raise CheckpointError(f"{tag_dir} is a {meta.get('stage')} checkpoint of {meta.get('model')}, "
                              "not a segmentation network (train one with `trainer segnet`)")
    model = UNet(**{k: v for k, v in meta["model"].items() if k != "class"})
    try:
        model.load_state_dict(read_module_state_dict(tag_dir))
    except RuntimeError as e:
        raise CheckpointError(f"{tag_dir} does not fit UNet{meta['model']}: {e}") from None
    return model.eval(), {**meta, "checkpoint": str(tag_dir)}


def _decode_rgb(raw: dict) -> np.ndarray:
    try:
        return np.asarray(Image.open(io.BytesIO(raw[EXT_IMAGE])).convert("RGB"))
    except KeyError:
        raise SampleError(f"no {EXT_IMAGE} member", file=raw.get("__url__"), sample=raw.get("__key__")) from None
    except Exception as e:
        raise SampleError(f"undecodable {EXT_IMAGE}: {e}", file=raw.get("__url__"), sample=raw.get("__key__")) from None


@torch.no_grad()
def _predict_pngs(model, raws: list[dict], input_size: int, threshold: float, soft: bool, device) -> list[bytes]:
    images = [_decode_rgb(r) for r in raws]
    probs = predict_masks(model, prepare_images(images, input_size).to(device)).float()
    pngs = []
    for image, p in zip(images, probs):
        full = F.interpolate(p[None], size=image.shape[:2], mode="bilinear", align_corners=False)[0, 0]
        full = full.cpu().numpy()
        mask = np.round(full * 255) if soft else np.where(full >= threshold, 255, 0)
        pngs.append(encode_png(mask.clip(0, 255).astype(np.uint8)))
    return pngs


def predict_mask_shards(model, in_path, out_dir, *, threshold: float = 0.5, batch_size: int = 16,
                        replace_existing: bool = False, soft: bool = False, shard_count: int | None = None) -> dict:
    dist = engine.init_distributed()
    if Path(in_path).resolve() == Path(out_dir).resolve():
        raise ConfigError(f"--out {out_dir} must differ from --in (the input shards are read while writing)")
    in_manifest = read_manifest(in_path)
    network, meta = load_segnet(model)
    device = torch.device("cuda", dist.local_rank) if cuda_available() else torch.device("cpu")
    network.to(device)
    input_size = int(meta["options"]["input_size"])
    total = int(in_manifest["samples"])
    record = {"checkpoint": meta["checkpoint"], "step": meta["step"], "model": meta["model"],
              "input_size": input_size, "threshold": None if soft else threshold, "soft": soft,
              "replace_existing": replace_existing, "source_shards": str(in_path),
              "code_version": _code_version()}
    writer = None
    start = [0]
    if dist.is_main:
        extra = {k: v for k, v in in_manifest.items() if k not in WRITER_FIELDS}
        count = shard_count or max((s["count"] for s in in_manifest.get("shards", [])), default=2000)
        writer = ShardWriter(out_dir, max_count=count, command=list(sys.argv),
                             manifest_extra={**extra, "source_manifest_command": in_manifest.get("command"),
                                             "masks": record})
        start = [writer.items_done]
    torch.distributed.broadcast_object_list(start, src=0)
    start = start[0]
    counts = {"predicted": 0, "kept": 0}

    def needs_prediction(raw):
        return replace_existing or EXT_MASK not in raw

    def write_round(batches: list[list[dict]], item_end: int) -> None:
        """Predict this rank's batch of the round, gather everything on rank 0, write in order."""
        mine = batches[dist.rank] if dist.rank < len(batches) else []
        todo = [r for r in mine if needs_prediction(r)]
        pngs = iter(_predict_pngs(network, todo, input_size, threshold, soft, device) if todo else [])
        results = [next(pngs) if needs_prediction(r) else None for r in mine]
        gathered = [None] * dist.world_size
        if dist.world_size > 1:
            torch.distributed.all_gather_object(gathered, results)
        else:
            gathered = [results]
        if not dist.is_main:
            return
        item = item_end - sum(len(b) for b in batches)
        for batch, masks in zip(batches, gathered):
            for raw, png in zip(batch, masks):
                item += 1
                members = {k: v for k, v in raw.items() if not k.startswith("__")}
                if png is not None:
                    members[EXT_MASK] = png
                counts["predicted" if png is not None else "kept"] += 1
                writer.write(raw["__key__"], members, item)

    bar = progress(total=total, initial=start, unit="sample", desc="masks", disable=not dist.is_main,
                   dynamic_ncols=True)
    try:
        batches: list[list[dict]] = [[]]
        item = 0
        for item, raw in enumerate(iter_samples(in_path, decode=False), 1):
            if item <= start:   # written by an earlier, interrupted run: count, don't redo
                counts["predicted" if needs_prediction(raw) else "kept"] += 1
                continue
            batches[-1].append(raw)
            if len(batches[-1]) == batch_size:
                if len(batches) == dist.world_size:
                    write_round(batches, item)
                    bar.update(sum(len(b) for b in batches))
                    batches = [[]]
                else:
                    batches.append([])
        if any(batches):
            write_round([b for b in batches if b], item)
            bar.update(sum(len(b) for b in batches))
        bar.close()
        manifest = None
        if dist.is_main:
            if item != total:
                raise SampleError(f"manifest.json counts {total} samples, the shards hold {item}",
                                  file=str(Path(in_path) / "manifest.json"))
            record.update(counts)
            manifest = writer.close(total)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    torch.distributed.barrier()
    return manifest


def _code_version() -> str:
    from trainer.report import code_version
    return code_version(engine.REPO_ROOT)


@click.command("masks")
@click.option("--model", "model", required=True, help="a `trainer segnet` run directory (or checkpoint)")
@click.option("--in", "in_path", required=True, help="input shard directory")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="output shard directory")
@click.option("--threshold", type=float, default=0.5, show_default=True, help="foreground if p >= threshold")
@click.option("--soft", is_flag=True, help="store p x 255 instead of a 0/255 mask")
@click.option("--replace-existing", is_flag=True, help="predict even where a sample has a mask.png")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--shard-count", type=int, default=None, help="samples per output shard (default: as the input)")
@engine.clear_errors
def cli(model, in_path, out_dir, threshold, soft, replace_existing, batch_size, shard_count):
    """Predict foreground masks over image shards and write them as new shards with mask.png."""
    manifest = predict_mask_shards(model, in_path, out_dir, threshold=threshold, batch_size=batch_size,
                                   replace_existing=replace_existing, soft=soft, shard_count=shard_count)
    if manifest is not None:
        m = manifest["masks"]
        click.echo(f"{manifest['samples']} samples -> {out_dir}: {m['predicted']} masks predicted, "
                   f"{m['kept']} kept")
