"""A numpy rasteriser: tapered capsules and a palm slab, depth-tested per pixel (a z-buffer),
with coverage, albedo, normals and RHD-style part labels, and Phong-like shading."""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from shards.camera import project

from .hands import FINGER_JOINTS, FOREARM_LENGTH, PosedHand


# RHD mask class ids: 0 background, 1 person, then per hand 16 parts: finger f segment s (0 = the
# tip segment .. 2 = the palm-side one) is 2 + 3f + s, the palm 17; right hands add 16.
PERSON_CLASS = 1
SIDE_CLASS_OFFSET = {"left": 0, "right": 16}


class Canvas:
    """Per-pixel depth (mm), coverage, albedo, normal (camera frame, towards the camera) and class
    label. Pixel (i, j) covers [i, i+1) x [j, j+1); its centre is (i + 0.5, j + 0.5)."""

    def __init__(self, size: int, focal: float):
        self.size, self.focal, self.c = size, focal, size / 2
        self.depth = np.full((size, size), np.inf, np.float32)
        self.alpha = np.zeros((size, size), np.float32)
        self.albedo = np.zeros((size, size, 3), np.float32)
        self.normal = np.zeros((size, size, 3), np.float32)
        self.normal[..., 2] = -1
        self.label = np.zeros((size, size), np.uint8)

    def _box(self, lo, hi):
        x0, y0 = max(int(np.floor(lo[0])), 0), max(int(np.floor(lo[1])), 0)
        x1, y1 = min(int(np.ceil(hi[0])) + 1, self.size), min(int(np.ceil(hi[1])) + 1, self.size)
        if x0 >= x1 or y0 >= y1:
            return None
        return (slice(y0, y1), slice(x0, x1)), np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5, \
            np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5

    def _write(self, sl, hard, soft_cov, depth, albedo, normal, label):
        """z-test `hard` pixels; antialiased silhouette pixels (soft) only colour empty ones."""
        cur_alpha = self.alpha[sl]
        soft = (soft_cov > cur_alpha) & ~np.isfinite(self.depth[sl]) & ~hard
        paint = hard | soft
        self.depth[sl] = np.where(hard, depth, self.depth[sl])
        self.albedo[sl] = np.where(paint[..., None], albedo, self.albedo[sl])
        self.normal[sl] = np.where(paint[..., None], normal, self.normal[sl])
        self.label[sl] = np.where(hard, label, self.label[sl])
        self.alpha[sl] = np.maximum(cur_alpha, soft_cov)

    def capsule(self, p1, p2, r1, r2, dorsal, volar_colour, volar_dir, label, nail=None):
        """Tapered capsule from p1 (radius r1) to p2 (r2), camera mm. Surface depth and normal
        come from a sphere swept along the projected axis; albedo blends dorsal -> volar colour
        by how far the normal faces `volar_dir`; `nail` paints the dorsal tip of the segment."""
        f, c = self.focal, self.c
        a = np.array([f * p1[0] / p1[2] + c, f * p1[1] / p1[2] + c])
        b = np.array([f * p2[0] / p2[2] + c, f * p2[1] / p2[2] + c])
        ra, rb = f * r1 / p1[2], f * r2 / p2[2]
        box = self._box(np.minimum(a - ra, b - rb) - 1, np.maximum(a + ra, b + rb) + 1)
        if box is None:
            return
        sl, xs, ys = box
        d = b - a
        dd = float(d @ d)
        t = np.clip(((xs - a[0]) * d[0] + (ys - a[1]) * d[1]) / dd, 0, 1) if dd > 1e-6 else np.zeros((len(ys), len(xs)), np.float32)
        ox, oy = xs - (a[0] + t * d[0]), ys - (a[1] + t * d[1])
        r = ra + t * (rb - ra)
        dist = np.sqrt(ox * ox + oy * oy)
        cov = np.clip(r - dist + 0.5, 0, 1)
        nx, ny = np.clip(ox / r, -1, 1), np.clip(oy / r, -1, 1)
        nz = np.sqrt(np.clip(1 - nx * nx - ny * ny, 0, 1))
        depth = p1[2] + t * (p2[2] - p1[2]) - nz * (r1 + t * (r2 - r1))
        hard = (dist <= r) & (depth < self.depth[sl])
        normal = np.stack([nx, ny, -nz], -1)
        facing = normal @ np.asarray(volar_dir, np.float32)
        w = np.clip(facing * 1.5 + 0.5, 0, 1)[..., None]
        albedo = (1 - w) * np.asarray(dorsal, np.float32) + w * np.asarray(volar_colour, np.float32)
        if nail is not None:
            is_nail = (facing < -0.45) & (t > 0.3)
            albedo = np.where(is_nail[..., None], np.asarray(nail, np.float32), albedo)
        self._write(sl, hard, cov, depth, albedo, normal, label)

    def polygon(self, points, normal, colour, label):
        """Planar polygon (camera mm, convex or not), z-tested with exact perspective depth."""
        f, c = self.focal, self.c
        uv = project(points, (f, f, c, c))
        box = self._box(uv.min(0), uv.max(0))
        if box is None:
            return
        sl, xs, ys = box
        im = Image.new("L", (len(xs[0]), len(ys)))
        x0, y0 = sl[1].start, sl[0].start
        ImageDraw.Draw(im).polygon([(u - x0 - 0.5, v - y0 - 0.5) for u, v in uv], fill=1)
        inside = np.asarray(im, bool)
        n = np.asarray(normal, np.float64)
        ray_dot = n[0] * (xs - c) / f + n[1] * (ys - c) / f + n[2]
        with np.errstate(divide="ignore", invalid="ignore"):
            depth = (n @ points.mean(0)) / ray_dot
        hard = inside & (depth > 0) & (depth < self.depth[sl])
        shape = hard.shape
        self._write(sl, hard, inside.astype(np.float32), depth.astype(np.float32),
                    np.broadcast_to(np.asarray(colour, np.float32), shape + (3,)),
                    np.broadcast_to(n.astype(np.float32), shape + (3,)), label)


def draw_hand(canvas: Canvas, hand: PosedHand) -> None:
    """Forearm, palm slab, thenar, 15 finger segments."""
    j, sh = hand.joints, hand.shape
    skin = sh.skin
    volar_skin = np.clip(skin * [1.06, 1.0, 0.98] + [0.05, 0.03, 0.03], 0, 1)
    nail = np.clip(0.5 * skin + 0.5 * np.array([0.98, 0.86, 0.84]), 0, 1)
    off = SIDE_CLASS_OFFSET[hand.side]
    palm_label = 17 + off
    # palm frame in the camera: volar normal from the finger roots
    radial = j[5] - j[17]
    distal = (j[9] + j[13]) / 2 - j[0]
    volar = np.cross(radial, distal) if hand.side == "right" else -np.cross(radial, distal)
    volar /= np.linalg.norm(volar)
    # forearm: skin near the wrist, then an optional sleeve
    r0, r1 = sh.forearm_radii
    length = FOREARM_LENGTH
    if hand.forearm[2] < 0:          # coming towards the camera: stop at half the wrist's depth
        length = min(length, 0.5 * j[0, 2] / -hand.forearm[2])
    start = min(hand.sleeve_start, length)
    cut, elbow = j[0] + hand.forearm * start, j[0] + hand.forearm * length
    r_cut = r0 + (r1 - r0) * start / FOREARM_LENGTH
    canvas.capsule(j[0], cut, r0, r_cut, skin, volar_skin, volar, PERSON_CLASS)
    if hand.sleeve is None:
        canvas.capsule(cut, elbow, r_cut, r1, skin, volar_skin, volar, PERSON_CLASS)
    else:
        canvas.capsule(cut, elbow, r_cut * 1.12, r1 * 1.12, hand.sleeve, hand.sleeve, volar, PERSON_CLASS)
    # palm: the face towards the camera plus rounded edges (capsules through the mid-plane)
    across = j[17] - j[5]                               # index MCP -> little MCP
    ulnar_wrist = j[0] + 0.28 * across + 0.08 * (j[17] - j[0])
    radial_wrist = j[0] - 0.22 * across + 0.08 * (j[5] - j[0])
    outline = np.array([radial_wrist, j[1] * 0.5 + j[5] * 0.5, j[5], j[9], j[13], j[17], ulnar_wrist])
    t = sh.palm_half_thickness
    towards_camera = volar if volar @ -outline.mean(0) > 0 else -volar
    face_colour = volar_skin if towards_camera @ volar > 0 else skin
    canvas.polygon(outline + towards_camera * t, towards_camera, face_colour, palm_label)
    edges = ((j[5], j[17], 0.85), (j[17], ulnar_wrist, 1.0), (ulnar_wrist, radial_wrist, 1.0), (radial_wrist, j[5], 0.9))
    for p, q, k in edges:
        canvas.capsule(p, q, t * k, t * k, skin, volar_skin, volar, palm_label)
    # thenar eminence: a fat capsule from the palm's radial base to the thumb MCP, palm side
    thenar_base = 0.5 * (j[0] + j[1]) + volar * t * 0.3
    canvas.capsule(thenar_base, j[2], sh.radii[0, 0] * 1.25, sh.radii[0, 1], skin, volar_skin, volar, palm_label)
    # fingers: segment s from the root; class counts from the tip (s = 2 -> 0)
    for f in range(5):
        idx = FINGER_JOINTS[f]
        for s in range(3):
            canvas.capsule(j[idx[s]], j[idx[s + 1]], sh.radii[f, s], sh.radii[f, s + 1], skin, volar_skin,
                           hand.volar[f, s], 2 + 3 * f + (2 - s) + off, nail if s == 2 else None)


def shade(canvas: Canvas, light: np.ndarray, ambient: float, diffuse: float, specular: float = 0.0,
          shininess: float = 16.0, tint=(1.0, 1.0, 1.0), albedo: np.ndarray | None = None) -> np.ndarray:
    """Lambert + Blinn highlight; `light` points from the surface to the light (camera frame)."""
    light = light / np.linalg.norm(light)
    n = canvas.normal
    lit = ambient + diffuse * np.clip(n @ light.astype(np.float32), 0, None)
    rgb = (canvas.albedo if albedo is None else albedo) * lit[..., None] * np.asarray(tint, np.float32)
    if specular > 0:
        half = light + np.array([0, 0, -1.0])
        half /= np.linalg.norm(half)
        rgb = rgb + specular * np.clip(n @ half.astype(np.float32), 0, None)[..., None] ** shininess
    return rgb


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def blob_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    """A hand-sized foreground of a few overlapping ellipses, 0/255."""
    yy, xx = np.mgrid[0:size, 0:size]
    fg = np.zeros((size, size), bool)
    for _ in range(6):
        cx, cy = rng.uniform(0.3, 0.7, 2) * size
        a, b = rng.uniform(0.05, 0.2, 2) * size
        t = rng.uniform(0, np.pi)
        x, y = (xx - cx) * np.cos(t) + (yy - cy) * np.sin(t), -(xx - cx) * np.sin(t) + (yy - cy) * np.cos(t)
        fg |= (x / a) ** 2 + (y / b) ** 2 < 1
    return fg.astype(np.uint8) * 255
