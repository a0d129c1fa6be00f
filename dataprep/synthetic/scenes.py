"""The two domains' images: the source ("studio") and target ("rendered scene") looks, their
backgrounds, and each image's own random stream (seed, domain, split, index)."""
from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from shards.camera import project

from .hands import FINGER_JOINTS, HandShape, SOURCE_STYLE, TARGET_STYLE, place, pose_hand, sample_shape
from .raster import Canvas, draw_hand, shade, to_uint8


STREAMS = {"freihand/training": 1, "freihand/evaluation": 2, "rhd/training": 3, "rhd/evaluation": 4, "imagenet": 5}


def smooth_field(rng: np.random.Generator, size: int, grid: int, low: float, high: float) -> np.ndarray:
    """Low-frequency colour field: a random grid x grid image upsampled bicubically."""
    g = (rng.uniform(low, high, (grid, grid, 3)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(g).resize((size, size), Image.BICUBIC), np.float32) / 255


def source_background(rng: np.random.Generator, version: str, size: int) -> np.ndarray:
    """FreiHAND-like backdrops: green screen, a homogeneous colour, a smooth sampled field."""
    yy = np.linspace(-0.5, 0.5, size, dtype=np.float32)[:, None, None]
    xx = np.linspace(-0.5, 0.5, size, dtype=np.float32)[None, :, None]
    if version == "gs":
        base = np.array([rng.uniform(0.1, 0.3), rng.uniform(0.5, 0.72), rng.uniform(0.15, 0.35)], np.float32)
        bg = base + 0.12 * (smooth_field(rng, size, 3, 0, 1) - 0.5) * [0.3, 1, 0.3] + rng.uniform(-0.15, 0.15) * yy
    elif version == "hom" or version == "auto":
        base = rng.uniform(0.15, 0.85, 3).astype(np.float32)
        bg = base + rng.uniform(-0.1, 0.1) * yy + rng.uniform(-0.1, 0.1) * xx
    else:
        bg = smooth_field(rng, size, int(rng.integers(2, 4)), 0.1, 0.9)
    return np.clip(np.broadcast_to(bg, (size, size, 3)), 0, 1).astype(np.float32)


def clutter_background(rng: np.random.Generator, size: int, skin: np.ndarray) -> np.ndarray:
    """Target backdrops: a colour field covered in random shapes, stripes and skin-coloured
    distractors, with fine grain."""
    field = smooth_field(rng, size, int(rng.integers(2, 6)), 0.05, 0.95)
    grey = field.mean(-1, keepdims=True)
    im = Image.fromarray(to_uint8(grey + rng.uniform(0.2, 0.7) * (field - grey)))
    draw = ImageDraw.Draw(im)
    span = (-0.2 * size, 1.2 * size)

    def muted():      # indoor-scene colours: mostly unsaturated, a few strong ones
        rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0, 0.7) ** 1.5, rng.uniform(0.15, 0.95))
        return tuple(int(v * 255) for v in rgb)

    for _ in range(int(rng.integers(15, 45))):
        kind = rng.integers(6)
        colour = muted()
        p = rng.uniform(*span, 4)
        box = (min(p[0], p[2]), min(p[1], p[3]), max(p[0], p[2]), max(p[1], p[3]))
        if kind == 0:
            draw.rectangle(box, fill=colour)
        elif kind == 1:
            draw.ellipse(box, fill=colour)
        elif kind == 2:
            draw.line([tuple(p[:2]), tuple(p[2:])], fill=colour, width=int(rng.integers(1, 8)))
        elif kind == 3:
            pts = rng.uniform(*span, (int(rng.integers(3, 7)), 2))
            draw.polygon([tuple(q) for q in pts], fill=colour)
        elif kind == 4:      # a striped panel
            step = int(rng.integers(3, 12))
            other = muted()
            for k, x in enumerate(np.arange(box[0], box[2], step)):
                draw.rectangle((x, box[1], x + step / 2, box[3]), fill=colour if k % 2 else other)
        else:                # skin-coloured distractor blob (faces, arms of other people)
            tone = np.clip(skin + rng.normal(0, 0.08, 3), 0, 1)
            w = rng.uniform(0.05, 0.25) * size
            centre = rng.uniform(0, size, 2)
            draw.ellipse((centre[0] - w, centre[1] - w * 1.3, centre[0] + w, centre[1] + w * 1.3),
                         fill=tuple(int(v * 255) for v in tone))
    if rng.random() < 0.5:
        im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.5))))   # depth of field
    bg = np.asarray(im, np.float32) / 255
    return bg + rng.normal(0, 0.03, (size, size, 1)).astype(np.float32)


def rng_for(seed: int, stream: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, STREAMS[stream], index])


def render_source(rng: np.random.Generator, size: int):
    """One source annotation: -> (canvas, joints (21,3) mm, focal)."""
    style = SOURCE_STYLE
    focal = size * rng.uniform(*style.focal_per_size)
    hand = pose_hand(rng, style, sample_shape(rng, style), "right")
    hand = place(hand, rng, focal, size, size * rng.uniform(*style.box_per_size), margin=0.09 * size)
    canvas = Canvas(size, focal)
    draw_hand(canvas, hand)
    return canvas, hand.joints, focal


def source_version_image(rng: np.random.Generator, canvas: Canvas, version: str, light: np.ndarray) -> np.ndarray:
    """Composite the rendered hand for one FreiHAND version: soft frontal light, the version's
    backdrop, and for 'sample'/'auto' a recoloured hand (FreiHAND's auto-colourisation)."""
    size = canvas.size
    albedo = canvas.albedo
    if version == "sample":
        albedo = np.clip(albedo * rng.uniform(0.85, 1.15, 3).astype(np.float32), 0, 1)
    elif version == "auto":
        albedo = np.clip(albedo * rng.uniform(0.55, 1.35, 3).astype(np.float32), 0, 1)
    fg = shade(canvas, light, ambient=0.58, diffuse=0.5, albedo=albedo)
    bg = source_background(rng, version, size)
    a = canvas.alpha[..., None]
    return to_uint8(a * fg + (1 - a) * bg)


def render_target(rng: np.random.Generator, size: int, main_side: str):
    """Two hands of one person (same shape and skin): the main one in view, the other smaller,
    further away, beside it or out of the image. -> (canvas, {side: joints mm}, focal, shape)."""
    style = TARGET_STYLE
    focal = size * rng.uniform(*style.focal_per_size)
    shape = sample_shape(rng, style)
    other_side = "left" if main_side == "right" else "right"
    main = place(pose_hand(rng, style, shape, main_side), rng, focal, size,
                 size * rng.uniform(*style.box_per_size), margin=0.06 * size)
    main_uv = project(main.joints, (focal, focal, size / 2, size / 2))
    centre = (main_uv.min(0) + main_uv.max(0)) / 2
    # the other hand: away from the main one (possibly off-image), smaller
    angle = rng.uniform(0, 2 * np.pi)
    reach = np.ptp(main_uv, axis=0).max() * rng.uniform(1.1, 2.5)
    other_centre = centre + reach * np.array([np.cos(angle), np.sin(angle)])
    other = place(pose_hand(rng, style, shape, other_side), rng, focal, size,
                  np.ptp(main_uv, axis=0).max() * rng.uniform(0.55, 0.9), margin=0, centre_px=other_centre)
    canvas = Canvas(size, focal)
    for hand in sorted((main, other), key=lambda h: -h.joints[:, 2].mean()):
        draw_hand(canvas, hand)
    return canvas, {main.side: main.joints, other.side: other.joints}, focal, shape


def joint_radii(shape: HandShape) -> np.ndarray:
    r = np.zeros(21)
    r[0] = shape.forearm_radii[0]
    for f in range(5):
        r[FINGER_JOINTS[f]] = shape.radii[f]
    return r


def visibility(canvas: Canvas, joints: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """A joint is visible when it projects into the image and no surface lies in front of the
    one enclosing it (z-buffer within the joint's radius plus 5 mm)."""
    uv = project(joints, (canvas.focal, canvas.focal, canvas.c, canvas.c))
    u, v = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
    inside = (u >= 0) & (v >= 0) & (u < canvas.size) & (v < canvas.size)
    vis = np.zeros(len(joints), bool)
    vis[inside] = canvas.depth[v[inside], u[inside]] >= joints[inside, 2] - radii[inside] - 5.0
    return vis


def target_image(rng: np.random.Generator, canvas: Canvas, skin: np.ndarray) -> np.ndarray:
    """Directional light with highlight and cast shadow on a cluttered backdrop, then colour
    cast, gamma, blur and noise."""
    size = canvas.size
    theta, phi = np.deg2rad(rng.uniform(30, 75)), rng.uniform(0, 2 * np.pi)
    light = np.array([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), -np.cos(theta)])
    tint = 1 + rng.normal(0, 0.08, 3)
    fg = shade(canvas, light, ambient=rng.uniform(0.15, 0.35), diffuse=rng.uniform(0.95, 1.2),
               specular=rng.uniform(0.12, 0.3), shininess=rng.uniform(10, 30), tint=tint)
    bg = clutter_background(rng, size, skin)
    # cast shadow: the silhouette shifted away from the light, blurred
    shift = (-light[:2] / max(np.linalg.norm(light[:2]), 1e-6) * rng.uniform(0.03, 0.08) * size).astype(int)
    a = canvas.alpha
    shadow = np.zeros_like(a)
    h, w = a.shape
    sx, sy = shift
    shadow[max(sy, 0):h + min(sy, 0), max(sx, 0):w + min(sx, 0)] = a[max(-sy, 0):h - max(sy, 0), max(-sx, 0):w - max(sx, 0)]
    shadow = np.asarray(Image.fromarray(to_uint8(shadow)).filter(ImageFilter.GaussianBlur(size / 80)), np.float32) / 255
    bg = bg * (1 - rng.uniform(0.25, 0.5) * shadow[..., None])
    img = a[..., None] * fg + (1 - a[..., None]) * bg
    img = np.clip(img * (1 + rng.normal(0, 0.07, 3)), 0, 1) ** rng.uniform(0.8, 1.25)
    pil = Image.fromarray(to_uint8(img)).filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.1))))
    img = np.asarray(pil, np.float32) / 255 + rng.normal(0, rng.uniform(0.01, 0.035), (size, size, 3))
    return to_uint8(img)


def rhd_depth_png(canvas: Canvas, rng: np.random.Generator) -> np.ndarray:
    """RHD depth encoding: metres = (R * 256 + G) / 65535 * 5; the backdrop is a tilted plane."""
    size = canvas.size
    yy, xx = np.mgrid[:size, :size].astype(np.float32) - size / 2
    gx, gy = rng.uniform(-2e-3, 2e-3, 2)                 # metres per pixel
    plane = rng.uniform(1.2, 3.5) + gx * xx + gy * yy
    metres = np.where(np.isfinite(canvas.depth), canvas.depth / 1000.0, plane)
    value = np.round(np.clip(metres, 0, 5) / 5 * 65535).astype(np.uint32)
    out = np.zeros((size, size, 3), np.uint8)
    out[..., 0], out[..., 1] = value >> 8, value & 255
    return out
