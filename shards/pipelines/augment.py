"""The paper's augmentation: its magnitudes (Augment), and as DALI graph pieces the crop->input
affine (rotation, zoom, shift) and the colour jitter folded into the ImageNet normalisation.

The training pipelines take the augmentation's random numbers from each sample's position in the
global order, and their reader workers compute it (shards.ordered_source.augment_parameters, the
same maths as here). With augment=None the functions below give the plain resize and
normalisation every pipeline uses without augmentation; with an Augment they draw from DALI's
random operators (each with its own seed, seeds.op_seed), a per-pipeline stream that a reader
in any other order can use (bench/data_pipeline.py's webdataset reader)."""
from __future__ import annotations

from dataclasses import dataclass

from nvidia.dali import fn

from .seeds import op_seed


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Augment:
    """The paper's augmentation: random rotation, translation and resize, then colour jitter.
    Magnitudes are our choice (the paper gives none)."""
    rotation_deg: float = 30.0           # angle ~ U(-r, r)
    scale: tuple = (0.8, 1.25)           # zoom ~ U(lo, hi) around the crop centre
    translate: float = 0.1               # shift ~ U(-t, t) x input size, each axis
    brightness: float = 0.4              # gain ~ U(1-b, 1+b)
    contrast: float = 0.4                # (x - 128) * c + 128, c ~ U(1-c, 1+c)
    colour_gain: float = 0.1             # per-channel gain ~ U(1-g, 1+g): a random colour cast


def as_augment(augment) -> Augment | None:
    """True -> the default Augment, False/None -> no augmentation, an Augment -> itself."""
    if augment is True:
        return Augment()
    if augment is False or augment is None:
        return None
    if isinstance(augment, Augment):
        return augment
    raise TypeError(f"augment must be a bool or an Augment, got {type(augment).__name__}")


def crop_to_input(hw, input_size: int, augment: Augment | None, seed: int):
    """The 2x3 affine taking stored-crop pixels to input pixels. Without augmentation it is the
    plain resize; with it: centre, zoom, rotate, shift, then re-centre on the input. `seed`: the
    pipeline's seed, from which each random operator's own is derived."""
    h, w = hw[0], hw[1]
    s = float(input_size)
    if augment is None:
        return fn.transforms.scale(scale=fn.stack(s / w, s / h))
    zoom = fn.random.uniform(range=list(augment.scale), seed=op_seed(seed, "zoom"))
    angle = fn.random.uniform(range=[-augment.rotation_deg, augment.rotation_deg], seed=op_seed(seed, "angle"))
    shift = fn.random.uniform(range=[-augment.translate * s, augment.translate * s], shape=[2],
                              seed=op_seed(seed, "shift"))
    mt = fn.transforms.translation(offset=fn.stack(-0.5 * w, -0.5 * h))
    mt = fn.transforms.scale(mt, scale=fn.stack(zoom * s / w, zoom * s / h))
    mt = fn.transforms.rotation(mt, angle=angle)
    return fn.transforms.translation(mt, offset=shift + 0.5 * s)


def colour_normalisation(augment: Augment | None, seed: int):
    """Per-channel (mean, std) for crop_mirror_normalize that apply the colour jitter and the
    ImageNet normalisation in the same pass.

    The jitter is affine per channel, y = a*x + b (brightness gain, contrast about 128, a random
    per-channel gain), so ((a*x + b)/255 - mu)/sigma = (x - (255*mu - b)/a) / (255*sigma/a). Being
    affine, it also commutes with background compositing (a convex combination): jittering the
    foreground and the background alike and then compositing equals compositing then jittering."""
    mean255 = [255.0 * m for m in IMAGENET_MEAN]
    std255 = [255.0 * s for s in IMAGENET_STD]
    if augment is None:
        return mean255, std255
    brightness = fn.random.uniform(range=[1 - augment.brightness, 1 + augment.brightness],
                                   seed=op_seed(seed, "brightness"))
    contrast = fn.random.uniform(range=[1 - augment.contrast, 1 + augment.contrast], seed=op_seed(seed, "contrast"))
    gain = fn.random.uniform(range=[1 - augment.colour_gain, 1 + augment.colour_gain], shape=[3],
                             seed=op_seed(seed, "colour_gain"))
    a = gain * (brightness * contrast)
    b = gain * (brightness * 128.0 * (1.0 - contrast))
    mean = (fn.constant(fdata=mean255, shape=[3]) - b) / a
    std = fn.constant(fdata=std255, shape=[3]) / a
    return mean, std


def with_mask_channel(mean, std):
    """Extend (mean, std) by a 4th channel that maps a 0..255 mask to 0..1."""
    if isinstance(mean, list):
        return mean + [0.0], std + [255.0]
    return (fn.cat(mean, fn.constant(fdata=[0.0], shape=[1])),
            fn.cat(std, fn.constant(fdata=[255.0], shape=[1])))
