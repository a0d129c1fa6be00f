"""`trainer predict`: a fine-tuned pose model on a researcher's own images or video.

    trainer predict --ckpt runs/ft --out preds/ photos/                 # a folder of images
    trainer predict --ckpt runs/ft --out preds/ clip.mp4 --boxes boxes.json --intrinsics 1500 1500 960 540

writes DIR/predictions.jsonl, one line per image (or video frame), and overlays: DIR/overlays/<name>
for images, DIR/overlay.mp4 for a video (the predicted skeleton and the crop box drawn on the input).

The crop, as in training: a square around the hand/body, resized to the network input. With
--boxes FILE (JSON: {"<image file name or frame index>": [x0, y0, x1, y1], ...}, image pixels, a
box tight around the hand/body) the square is centred on the box with side = --context (1.5, the
conversions' default) x its longer side, padded with black where it leaves the image. Images
without a box are used whole (a square around the whole image). Left hands: the conversions mirror
them into right hands, so the model has only seen right hands; --mirror (every input) or an entry
{"box": [x0, y0, x1, y1], "mirror": true} mirrors the crop, and the prediction is mirrored back.

The camera: --intrinsics FX FY CX CY (image pixels), or the default: f = max(width, height) pixels
(about a 53 degree field of view across the longer side, typical of phone and web cameras) with
the principal point at the image centre. The network predicts 2D joints and each joint's depth
relative to the root joint; the root's own depth is --root-depth-mm, or else the depth at which the
reference bone (hands: wrist to middle-finger MCP, 90 mm; bodies: right hip to right knee, 450 mm;
typical adult lengths) has that length. Each line records what was used.

predictions.jsonl, per image: image, box (the square crop, image px), intrinsics [fx, fy, cx, cy]
and intrinsics_from, joints2d_px (K x 2, image pixels, (0, 0) = top-left corner of the first
pixel), joints3d_mm (K x 3, camera axes, root-relative), root_camera_mm (the root joint's camera
coordinates at the chosen depth), root_depth_from, mirrored, peak (K heatmap maxima, a rough confidence),
joint_names. With --skip-bad, an image that cannot be used gets {"image", "error"} instead.

Runs on the GPU when CUDA is present (shards.device), on the CPU otherwise.

Public API
    predict(ckpt, input_path, out_dir, *, boxes=None, intrinsics=None, root_depth_mm=None,
            context=1.5, batch_size=16, decode="argmax", skip_bad=False, overlays=True, mirror=False)
        -> summary dict
    crop_box(box, context) -> (x0, y0, side);  whole_image_box(w, h) -> (x0, y0, side)
    crop_image(image, x0, y0, side, size) -> (size, size, 3) uint8
    root_depth_for_bone(uv_a, uv_b, z_a, z_b, intrinsics, length_mm) -> float | None
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from shards.device import cuda_available
from shards.pipelines.augment import IMAGENET_MEAN, IMAGENET_STD
from shards.schema import JOINT_ORDERS, SampleError
from trainer import engine
from trainer.errors import ConfigError
from trainer.heatmaps import decode_heatmaps
from trainer.reconstruct import backproject, voxels_to_input_px

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
DEFAULT_CONTEXT = 1.5       # dataprep's crops: side = 1.5 x the joints' bounding box
# (joint a, joint b, typical adult length in mm): sets the root depth when none is given.
REFERENCE_BONE = {"hand21": (0, 9, 90.0), "h36m17": (1, 2, 450.0)}
ROOT_JOINT = 0              # wrist (hand21) and pelvis (h36m17): what the model's depths are relative to


# -- input ------------------------------------------------------------------------------------
def list_inputs(path: Path):
    """-> ("images", [files]) or ("video", path)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ConfigError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
        return "images", files
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return "video", path
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return "images", [path]
    raise ConfigError(f"{path} is neither a folder of images, an image nor a video "
                      f"({', '.join(sorted(VIDEO_SUFFIXES))})")


def read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as e:
        raise SampleError(f"unreadable image: {e}", file=str(path)) from None


def video_frames(path: Path):
    """(frame index, HxWx3 uint8) in presentation order, and the stream's frame rate and count."""
    import av
    try:
        container = av.open(str(path))
        stream = container.streams.video[0]
    except Exception as e:
        raise SampleError(f"unreadable video: {e}", file=str(path)) from None
    rate = stream.average_rate or stream.guessed_rate or 25

    def frames():
        try:
            for i, frame in enumerate(container.decode(stream)):
                yield i, frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as e:
            raise SampleError(f"video decoding failed: {e}", file=str(path)) from None
        finally:
            container.close()
    return frames(), float(rate), stream.frames or None


def read_boxes(path) -> dict:
    if path is None:
        return {}
    try:
        boxes = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"boxes file {path}: {e}") from None
    if not isinstance(boxes, dict):
        raise ConfigError(f"boxes file {path}: expected a JSON object {{\"<image or frame>\": [x0, y0, x1, y1]}}")
    return {str(k): v for k, v in boxes.items()}


# -- geometry ---------------------------------------------------------------------------------
def check_box(box, width: int, height: int) -> tuple[float, float, float, float]:
    """[x0, y0, x1, y1] of finite numbers, positive size, overlapping the image."""
    if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
        raise ValueError(f"box {box!r} is not [x0, y0, x1, y1]")
    x0, y0, x1, y1 = map(float, box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError(f"box {box!r} is not finite")
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {box!r} has no area (needs x1 > x0 and y1 > y0)")
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise ValueError(f"box {box!r} lies outside the {width}x{height} image")
    return x0, y0, x1, y1


def crop_box(box, context: float = DEFAULT_CONTEXT) -> tuple[float, float, float]:
    """Square crop (x0, y0, side) centred on the box, side = context x its longer side."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * context
    return (x0 + x1) / 2 - side / 2, (y0 + y1) / 2 - side / 2, side


def whole_image_box(width: int, height: int) -> tuple[float, float, float]:
    side = float(max(width, height))
    return (width - side) / 2, (height - side) / 2, side


def crop_image(image: np.ndarray, x0: float, y0: float, side: float, size: int) -> np.ndarray:
    """The square [x0, x0 + side) x [y0, y0 + side) resized to size x size, black outside the image.
    One affine warp; pixel (0, 0)'s top-left corner is the origin (continuous coordinates):
    input u = (u_image - x0) * size / side. Area averaging when shrinking more than 2x."""
    import cv2
    scale = size / side
    src = image
    if scale < 0.5:   # shrink in integer steps first (area), then the exact affine: no aliasing
        factor = int(1 / scale) // 2 * 2 or 1
        src = cv2.resize(image, (max(1, image.shape[1] // factor), max(1, image.shape[0] // factor)),
                         interpolation=cv2.INTER_AREA)
        fx, fy = src.shape[1] / image.shape[1], src.shape[0] / image.shape[0]
        x0, y0, scale_x, scale_y = x0 * fx, y0 * fy, scale / fx, scale / fy
    else:
        scale_x = scale_y = scale
    # continuous u_in = s (u - x0)  ->  OpenCV's pixel-centre indices: i_in = s (i + 0.5 - x0) - 0.5
    matrix = np.array([[scale_x, 0, scale_x * (0.5 - x0) - 0.5], [0, scale_y, scale_y * (0.5 - y0) - 0.5]])
    return cv2.warpAffine(src, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(0, 0, 0))


def default_intrinsics(width: int, height: int) -> list[float]:
    f = float(max(width, height))
    return [f, f, width / 2, height / 2]


def root_depth_for_bone(uv_a, uv_b, z_a, z_b, intrinsics, length_mm: float) -> float | None:
    """The root depth Z at which the bone a-b, back-projected at depths Z + z_a and Z + z_b, is
    length_mm long: |Z d + e|^2 = L^2 is a quadratic in Z; the larger root. None if there is no
    positive solution (the predicted depth difference alone is longer than the bone)."""
    fx, fy, cx, cy = intrinsics
    d = np.array([(uv_a[0] - uv_b[0]) / fx, (uv_a[1] - uv_b[1]) / fy, 0.0])
    e = np.array([(uv_a[0] - cx) * z_a / fx - (uv_b[0] - cx) * z_b / fx,
                  (uv_a[1] - cy) * z_a / fy - (uv_b[1] - cy) * z_b / fy, z_a - z_b])
    a, b, c = d @ d, 2 * d @ e, e @ e - length_mm ** 2
    disc = b * b - 4 * a * c
    if a < 1e-12 or disc < 0:
        return None
    z = (-b + math.sqrt(disc)) / (2 * a)
    return z if z > 0 else None


# -- the model --------------------------------------------------------------------------------
@dataclass
class Item:
    name: str
    image: np.ndarray
    box: tuple[float, float, float]          # x0, y0, side of the square crop
    intrinsics: list[float]
    intrinsics_from: str
    mirror: bool = False                     # a left hand: the crop is flipped, the prediction back


def normalise(crops: np.ndarray) -> torch.Tensor:
    """(B, S, S, 3) uint8 -> (B, 3, S, S) float, as the input pipelines normalise."""
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.inference_mode()
def run_batch(model, spec, items: list[Item], device, decode: str, root_depth_mm: float | None) -> list[dict]:
    size = spec.input_size
    crops = np.stack([crop_image(it.image, *it.box, size)[:, ::-1] if it.mirror else crop_image(it.image, *it.box, size)
                      for it in items])
    heatmaps = model(normalise(crops).to(device)).float()
    peak = heatmaps.flatten(2).amax(-1).cpu().numpy()
    uvz = decode_heatmaps(heatmaps, decode).cpu().numpy()
    uv_in, z_rel = voxels_to_input_px(uvz, spec.volume(heatmaps.shape[-1]))
    z_rel = z_rel - z_rel[:, ROOT_JOINT:ROOT_JOINT + 1]   # the predicted root is the root: exactly 0
    flipped = np.array([it.mirror for it in items])
    uv_in[flipped, :, 0] = size - uv_in[flipped, :, 0]   # continuous coordinates: u -> size - u
    records = []
    for i, it in enumerate(items):
        x0, y0, side = it.box
        s = size / side
        uv_img = uv_in[i] / s + np.array([x0, y0])
        k = it.intrinsics
        if root_depth_mm is not None:
            depth, how = float(root_depth_mm), "given (--root-depth-mm)"
        else:
            a, b, length = REFERENCE_BONE[spec.joint_order]
            depth = root_depth_for_bone(uv_img[a], uv_img[b], z_rel[i, a], z_rel[i, b], k, length)
            names = JOINT_ORDERS[spec.joint_order]
            how = f"reference bone {names[a]}-{names[b]} = {length:g} mm"
            if depth is None:   # no solution: the depth where the bone is shortest, said so
                depth, how = _closest_depth(uv_img[a], uv_img[b], z_rel[i, a], z_rel[i, b], k), how + " (closest)"
        joints = backproject(uv_img[None], depth + z_rel[i][None], k)[0]
        root = joints[ROOT_JOINT].copy()
        records.append({
            "image": it.name, "box": [x0, y0, x0 + side, y0 + side], "intrinsics": list(map(float, k)),
            "intrinsics_from": it.intrinsics_from, "joints2d_px": uv_img.round(3).tolist(),
            "joints3d_mm": (joints - root).round(3).tolist(), "root_camera_mm": root.round(3).tolist(),
            "root_depth_from": how, "mirrored": it.mirror, "peak": peak[i].round(5).tolist(),
            "joint_order": spec.joint_order})
    return records


def _closest_depth(uv_a, uv_b, z_a, z_b, intrinsics) -> float:
    fx, fy, cx, cy = intrinsics
    d = np.array([(uv_a[0] - uv_b[0]) / fx, (uv_a[1] - uv_b[1]) / fy, 0.0])
    e = np.array([(uv_a[0] - cx) * z_a / fx - (uv_b[0] - cx) * z_b / fx,
                  (uv_a[1] - cy) * z_a / fy - (uv_b[1] - cy) * z_b / fy, z_a - z_b])
    return float(max(-(d @ e) / max(d @ d, 1e-12), 1.0))


# -- overlays ---------------------------------------------------------------------------------
def overlay(image: np.ndarray, record: dict) -> np.ndarray:
    from shards.joints import BONES
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    scale = max(1.0, max(image.shape[:2]) / 400)   # lines that stay visible on large images
    x0, y0, x1, y1 = record["box"]
    draw.rectangle([x0, y0, x1, y1], outline=(255, 255, 0), width=max(1, round(scale)))
    uv = np.asarray(record["joints2d_px"])
    for a, b in BONES.get(record["joint_order"], []):
        draw.line([tuple(uv[a]), tuple(uv[b])], fill=(255, 40, 40), width=max(1, round(2 * scale)))
    r = 2.5 * scale
    for u, v in uv:
        draw.ellipse([u - r, v - r, u + r, v + r], fill=(40, 255, 40))
    return np.asarray(canvas)


class VideoWriter:
    """overlay.mp4 through PyAV: H.264 where this FFmpeg has it, MPEG-4 part 2 otherwise."""

    def __init__(self, path: Path, rate: float):
        import av
        self.path, self.rate, self.av = path, rate, av
        self.container, self.stream = av.open(str(path), "w"), None

    def write(self, frame: np.ndarray) -> None:
        h, w = frame.shape[0] // 2 * 2, frame.shape[1] // 2 * 2   # yuv420p needs even sizes
        frame = np.ascontiguousarray(frame[:h, :w])
        if self.stream is None:
            from fractions import Fraction
            codec = "libx264" if "libx264" in self.av.codecs_available else "mpeg4"
            self.stream = self.container.add_stream(codec, rate=Fraction(self.rate).limit_denominator(1001))
            self.stream.width, self.stream.height, self.stream.pix_fmt = w, h, "yuv420p"
            if codec == "mpeg4":
                self.stream.bit_rate = max(1_000_000, w * h * 4)
        for packet in self.stream.encode(self.av.VideoFrame.from_ndarray(frame, format="rgb24")):
            self.container.mux(packet)

    def close(self) -> None:
        if self.stream is not None:
            for packet in self.stream.encode():
                self.container.mux(packet)
        self.container.close()


# -- the command --------------------------------------------------------------------------------
def predict(ckpt, input_path, out_dir, *, boxes=None, intrinsics=None, root_depth_mm=None, context=DEFAULT_CONTEXT,
            batch_size=16, decode="argmax", skip_bad=False, overlays=True, mirror=False) -> dict:
    from trainer.pose_checkpoint import load_checkpoint
    input_path, out_dir = Path(input_path), Path(out_dir)
    if context <= 0 or batch_size < 1:
        raise ConfigError("--context must be positive and --batch-size at least 1")
    if intrinsics is not None and (intrinsics[0] <= 0 or intrinsics[1] <= 0):
        raise ConfigError(f"--intrinsics fx, fy must be positive, got {intrinsics}")
    if root_depth_mm is not None and root_depth_mm <= 0:
        raise ConfigError(f"--root-depth-mm must be positive, got {root_depth_mm}")
    kind, source = list_inputs(input_path)
    box_table = read_boxes(boxes)
    device = torch.device("cuda" if cuda_available() else "cpu")
    model, spec = load_checkpoint(ckpt, device=device)
    if spec.joint_order not in REFERENCE_BONE:
        raise ConfigError(f"{spec.checkpoint}: no reference bone for joint order {spec.joint_order}")
    if spec.joint_order != "hand21" and (mirror or any(isinstance(b, dict) and b.get("mirror") for b in box_table.values())):
        raise ConfigError("mirroring is for left hands; a mirrored body would also swap its left and right joints")
    out_dir.mkdir(parents=True, exist_ok=True)
    if overlays and kind == "images":
        (out_dir / "overlays").mkdir(exist_ok=True)

    if kind == "images":
        frames, rate, total = ((f.name, f) for f in source), None, len(source)
    else:
        decoded, rate, total = video_frames(source)
        frames = ((str(i), image) for i, image in decoded)
    writer = VideoWriter(out_dir / "overlay.mp4", rate) if overlays and kind == "video" else None
    counts = {"predicted": 0, "skipped": 0}
    names = list(JOINT_ORDERS[spec.joint_order])

    def item_for(name, image_or_path) -> Item:
        image = read_image(image_or_path) if kind == "images" else image_or_path
        h, w = image.shape[:2]
        box = box_table.get(name, box_table.get(f"frame{int(name):06d}") if kind == "video" else None)
        flip = mirror
        if isinstance(box, dict):   # {"box": [...], "mirror": true}
            flip = bool(box.get("mirror", mirror))
            box = box.get("box")
        if box is not None:
            try:
                square = crop_box(check_box(box, w, h), context)
            except ValueError as e:
                raise SampleError(f"bad box for {name}: {e}", file=str(boxes)) from None
        else:
            square = whole_image_box(w, h)
        k, how = (list(intrinsics), "given (--intrinsics)") if intrinsics is not None else \
            (default_intrinsics(w, h), "default: f = max(width, height) px, principal point at the image centre")
        return Item(name, image, square, k, how, flip)

    with open(out_dir / "predictions.jsonl", "w") as out, \
            tqdm(total=total, unit="img" if kind == "images" else "frame", desc="predict", dynamic_ncols=True) as bar:
        def flush(batch):
            for item, record in zip(batch, run_batch(model, spec, batch, device, decode, root_depth_mm)):
                out.write(json.dumps({**record, "joint_names": names}) + "\n")
                if writer is not None:
                    writer.write(overlay(item.image, record))
                elif overlays:
                    Image.fromarray(overlay(item.image, record)).save(out_dir / "overlays" / item.name)
                counts["predicted"] += 1
                bar.update(1)

        batch = []
        try:
            for name, image_or_path in frames:
                try:
                    batch.append(item_for(name, image_or_path))
                except SampleError as e:
                    if not skip_bad:
                        raise
                    out.write(json.dumps({"image": name, "error": str(e)}) + "\n")
                    if writer is not None and kind == "video":   # keep the video's timing: the frame as it is
                        writer.write(image_or_path)
                    counts["skipped"] += 1
                    bar.update(1)
                    continue
                if len(batch) == batch_size:
                    flush(batch)
                    batch = []
            if batch:
                flush(batch)
        finally:
            if writer is not None:
                writer.close()
    return {**counts, "out": str(out_dir), "device": device.type, "checkpoint": spec.checkpoint}


@click.command("predict")
@click.option("--ckpt", required=True, help="fine-tuning run directory, its checkpoints/ or a tag directory")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="output directory")
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, path_type=Path))
@click.option("--boxes", type=click.Path(path_type=Path), default=None,
              help='JSON {"<image file name or frame index>": [x0, y0, x1, y1]}; images without one are used whole')
@click.option("--context", type=float, default=DEFAULT_CONTEXT, show_default=True,
              help="crop side / the box's longer side (the conversions' crops use 1.5)")
@click.option("--intrinsics", type=float, nargs=4, default=None, metavar="FX FY CX CY",
              help="camera intrinsics in image pixels (default: f = max(width, height), centre)")
@click.option("--root-depth-mm", type=float, default=None,
              help="camera depth of the root joint (default: from a reference bone's typical length)")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--decode", type=click.Choice(["argmax", "soft_argmax"]), default="argmax", show_default=True)
@click.option("--mirror", is_flag=True, help="the inputs show left hands: mirror the crops (the model has seen right "
              "hands only) and the predictions back; per image: {\"box\": [...], \"mirror\": true} in --boxes")
@click.option("--skip-bad", is_flag=True, help="record unreadable images and bad boxes in predictions.jsonl and go on")
@click.option("--no-overlays", is_flag=True, help="write predictions.jsonl only")
@engine.clear_errors
def cli(ckpt, out_dir, input_path, boxes, context, intrinsics, root_depth_mm, batch_size, decode, mirror, skip_bad,
        no_overlays):
    """Predict 3D joints on a folder of images or a video with a fine-tuned model."""
    summary = predict(ckpt, input_path, out_dir, boxes=boxes, intrinsics=intrinsics, root_depth_mm=root_depth_mm,
                      context=context, batch_size=batch_size, decode=decode, skip_bad=skip_bad,
                      overlays=not no_overlays, mirror=mirror)
    click.echo(f"{summary['predicted']} predicted, {summary['skipped']} skipped ({summary['device']}) -> "
               f"{out_dir}/predictions.jsonl")
