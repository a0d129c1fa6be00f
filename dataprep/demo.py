"""Embedded demo data: a labelled source hand set in FreiHAND's released layout, a target set in
RHD's released layout, and an ImageNet-val-layout folder of real photographs, so the whole method
runs with no dataset downloaded.

Hands are 3D skeletons (hand21, random plausible articulation and per-hand bone lengths) posed in
front of a pinhole camera and rasterised with numpy: every bone is a tapered capsule, the palm a
slab, the forearm a capsule, all depth-tested per pixel (a z-buffer) and shaded from per-pixel
normals. 3D joints, intrinsics, masks, part labels and depth are therefore exact.

The two domains differ in how they look, not in the poses they show, so that the gap is the
one an appearance-level method (the paper's) is meant to bridge:
  source ("studio"): light skin palette, frontal soft light, green-screen / plain / smooth
      backgrounds varied by FreiHAND version (gs, hom, sample, auto), slim hands, right hands
      only, clean JPEGs.
  target ("rendered scene"): darker/olive skin palette, one directional light with specular and a
      cast shadow, cluttered procedural backgrounds with skin-coloured distractors and a second
      hand, thicker fingers with slightly other proportions, both hands (left and right; the RHD
      converter mirrors left ones), smaller in the image, colour cast, gamma, blur and sensor noise.
  shared: the articulation model, the view distribution (yaw, pitch, in-plane roll: real hand
      datasets are not uniformly rotated, and a 64 px model cannot tell a curled hand's palm from
      its back reliably), the field of view. The target's root-relative 3D poses therefore follow
      almost the source's distribution; only the small proportion change (a few mm) moves them.
Backgrounds for background replacement come from scikit-image's bundled photographs, read from
its data folder (never fetched).

Everything is a function of --seed: each image draws from its own random stream
(seed, domain, split, index), so the output does not depend on the number of workers.
"""
from __future__ import annotations

import colorsys
import json
import multiprocessing as mp
import os
import pickle
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

FREIHAND_VERSIONS = ("gs", "hom", "sample", "auto")    # image id // annotations, as released
RHD_PERM = np.array([0, 4, 3, 2, 1, 8, 7, 6, 5, 12, 11, 10, 9, 16, 15, 14, 13, 20, 19, 18, 17])   # hand21 = rhd[PERM]
HAND21_TO_RHD = np.argsort(RHD_PERM)                    # rhd = hand21[HAND21_TO_RHD] (tip -> MCP per finger)
FINGER_JOINTS = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16], [17, 18, 19, 20]])
# RHD mask class ids: 0 background, 1 person, then per hand 16 parts: finger f segment s (0 = the
# tip segment .. 2 = the palm-side one) is 2 + 3f + s, the palm 17; right hands add 16.
PERSON_CLASS = 1
SIDE_CLASS_OFFSET = {"left": 0, "right": 16}
STREAMS = {"freihand/training": 1, "freihand/evaluation": 2, "rhd/training": 3, "rhd/evaluation": 4, "imagenet": 5}

# Bundled scikit-image photographs (files in skimage/data shipped with the wheel, read directly so
# nothing can be fetched). Greyscale ones are kept: ImageNet has greyscale files too.
PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "hubble_deep_field.jpg", "ihc.png",
          "retina.jpg", "motorcycle_left.png", "motorcycle_right.png", "color.png", "camera.png", "coins.png",
          "moon.png", "page.png", "grass.png", "gravel.png", "brick.png", "clock_motion.png", "cell.png", "text.png")


# -- hand shape and pose ------------------------------------------------------------------------
# Hand frame (right hand, millimetres): x radial (thumb side), y distal (wrist -> fingers), z volar
# (palm normal); right-handed. Rows: thumb CMC, index/middle/ring/little MCP.
BASE_ROOTS = np.array([[20.0, 26, 9], [24, 80, 0], [4, 85, 0], [-14, 80, 0], [-30, 70, 2]])
BASE_LENGTHS = np.array([[38.0, 32, 27], [40, 24, 21], [45, 28, 22], [42, 27, 21], [33, 20, 19]])
BASE_SPLAY_DEG = np.array([0.0, 6, 0, -6, -13])          # rest direction of each finger in the palm plane
BASE_RADII = np.array([[12.0, 10, 8.5, 7.5], [9.5, 8.5, 7.5, 6.5], [10, 9, 8, 6.8], [9.3, 8.3, 7.3, 6.4], [8.3, 7.3, 6.5, 5.8]])
PALM_HALF_THICKNESS = 13.0
FOREARM_RADII = (26.0, 33.0)
FOREARM_LENGTH = 420.0      # long enough to leave the image in most views


@dataclass(frozen=True)
class Style:
    """Everything that differs between the two domains."""
    name: str
    skin: tuple                 # palette of RGB in 0..1
    size_mean: float            # overall hand scale
    size_std: float
    finger_length: float        # phalanx length factor
    thumb_length: float
    palm_length: float
    thickness: float            # finger/palm radius factor
    roll_std_deg: float | None  # in-plane rotation spread around upright; None = uniform
    yaw_deg: float              # rotation about the hand's long axis ~ U(-yaw, yaw): 0 palm to the camera, 180 back
    pitch_deg: float            # tilt towards/away from the camera ~ U(-pitch, pitch)
    focal_per_size: tuple       # focal length range / image side
    box_per_size: tuple         # projected joint bounding-box side range / image side
    sleeve_prob: float


SOURCE_STYLE = Style(
    name="studio",
    skin=((0.94, 0.77, 0.66), (0.89, 0.69, 0.57), (0.97, 0.82, 0.71), (0.86, 0.66, 0.54), (0.92, 0.74, 0.63)),
    size_mean=1.0, size_std=0.06, finger_length=1.0, thumb_length=1.0, palm_length=1.0, thickness=1.0,
    roll_std_deg=35.0, yaw_deg=100.0, pitch_deg=45.0, focal_per_size=(2.0, 2.8), box_per_size=(0.42, 0.62),
    sleeve_prob=0.3)

TARGET_STYLE = Style(
    name="scene",
    skin=((0.55, 0.37, 0.25), (0.68, 0.49, 0.33), (0.46, 0.31, 0.22), (0.76, 0.58, 0.40), (0.62, 0.47, 0.30),
          (0.72, 0.55, 0.46)),
    size_mean=1.03, size_std=0.06, finger_length=0.96, thumb_length=1.03, palm_length=1.04, thickness=1.3,
    roll_std_deg=35.0, yaw_deg=100.0, pitch_deg=45.0, focal_per_size=(2.0, 2.8), box_per_size=(0.3, 0.45),
    sleeve_prob=0.7)


@dataclass
class HandShape:
    roots: np.ndarray      # 5 x 3: thumb CMC (hand21 joint 1), finger MCPs
    lengths: np.ndarray    # 5 x 3 bone lengths, base -> tip
    splay: np.ndarray      # 5 rest directions (rad), fingers only
    radii: np.ndarray      # 5 x 4 radius at each joint of each finger
    palm_half_thickness: float
    forearm_radii: tuple
    skin: np.ndarray       # RGB 0..1


def sample_shape(rng: np.random.Generator, style: Style) -> HandShape:
    scale = rng.normal(style.size_mean, style.size_std)
    palm = np.array([rng.normal(1, 0.05), style.palm_length * rng.normal(1, 0.04), 1.0])
    lengths = BASE_LENGTHS * rng.normal(1, 0.04, (5, 3)) * style.finger_length
    lengths[0] *= style.thumb_length / style.finger_length
    thick = style.thickness * rng.normal(1, 0.06)
    skin = np.array(style.skin[rng.integers(len(style.skin))]) + rng.normal(0, 0.025, 3)
    return HandShape(roots=BASE_ROOTS * palm * scale, lengths=lengths * scale,
                     splay=np.deg2rad(BASE_SPLAY_DEG + rng.normal(0, 2, 5)), radii=BASE_RADII * thick * scale,
                     palm_half_thickness=PALM_HALF_THICKNESS * thick * scale,
                     forearm_radii=tuple(r * thick * scale for r in FOREARM_RADII), skin=np.clip(skin, 0, 1))


# Grasp archetypes: curl of thumb, index, middle, ring, little (0 straight .. 1 fully flexed).
ARCHETYPES = np.array([
    [0.05, 0.0, 0.0, 0.0, 0.0],     # open
    [0.3, 0.3, 0.35, 0.4, 0.45],    # relaxed
    [0.9, 0.95, 0.95, 0.95, 0.95],  # fist
    [0.7, 0.0, 0.9, 0.9, 0.9],      # point
    [0.1, 0.0, 0.0, 0.9, 0.9],      # "V"
    [0.6, 0.55, 0.1, 0.05, 0.05],   # pinch / OK
    [0.0, 0.9, 0.9, 0.9, 0.0],      # "call me"
    [0.5, 0.6, 0.6, 0.6, 0.6],      # grip a cylinder
    [0.8, 0.0, 0.0, 0.0, 0.9],      # "three"
])


def rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


@dataclass
class Articulation:
    curl: np.ndarray          # 5 (thumb..little)
    mcp: np.ndarray           # 5 flexion angles (rad) at each finger's first flexing joint
    pip: np.ndarray
    dip: np.ndarray
    abduction: np.ndarray     # 5 (rad), fingers only (thumb uses thumb_spread/elevation)
    thumb_spread: float
    thumb_elevation: float
    wrist_flex: float
    wrist_deviation: float


def sample_articulation(rng: np.random.Generator) -> Articulation:
    if rng.random() < 0.25:
        curl = rng.random(5)
    else:
        curl = ARCHETYPES[rng.integers(len(ARCHETYPES))] + rng.normal(0, 0.12, 5)
    curl = np.clip(curl, 0, 1)
    mcp = np.deg2rad(np.clip(curl * 85 - 8 + rng.normal(0, 7, 5), -15, 92))
    pip = np.deg2rad(np.clip(curl * 100 + rng.normal(0, 8, 5), -2, 110))
    dip = np.clip(0.7 * pip + np.deg2rad(rng.normal(0, 6, 5)), 0, np.deg2rad(80))
    spread = rng.uniform(-0.2, 1.0) * (1 - curl[1:].mean())
    abduction = np.deg2rad(np.r_[0, spread * np.array([10, 0, -8, -16]) + rng.normal(0, 3, 4)])
    # The thumb: its metacarpal direction (spread in the palm plane, elevation = opposition) and
    # two flexions (MCP, IP).
    mcp[0] = np.deg2rad(np.clip(45 * curl[0] + rng.normal(0, 6), -5, 60))
    pip[0] = np.deg2rad(np.clip(75 * curl[0] + rng.normal(0, 8), -10, 85))
    return Articulation(curl=curl, mcp=mcp, pip=pip, dip=dip, abduction=abduction,
                        thumb_spread=np.deg2rad(rng.uniform(25, 70) - 10 * curl[0]),
                        thumb_elevation=np.deg2rad(np.clip(12 + 45 * curl[0] + rng.normal(0, 8), 0, 70)),
                        wrist_flex=np.deg2rad(rng.uniform(-40, 40)), wrist_deviation=np.deg2rad(rng.uniform(-20, 20)))


@dataclass
class Skeleton:
    joints: np.ndarray        # 21 x 3 hand21
    volar: np.ndarray         # 5 x 3 x 3: palm-side direction of each finger segment
    forearm: np.ndarray       # unit direction wrist -> elbow


def articulate(shape: HandShape, art: Articulation) -> Skeleton:
    """Forward kinematics in the hand frame (right hand)."""
    x, y, z = np.eye(3)
    joints = np.zeros((21, 3))
    volar = np.zeros((5, 3, 3))
    for f in range(5):
        root = shape.roots[f]
        if f == 0:
            d = np.cos(art.thumb_elevation) * (np.cos(art.thumb_spread) * x + np.sin(art.thumb_spread) * y) \
                + np.sin(art.thumb_elevation) * z
            bend = np.array([-0.6, 0.0, 0.8])               # thumb flexes across the palm
            bend = bend - bend.dot(d) * d
            angles = (0.0, art.mcp[0], art.pip[0])          # CMC->MCP is the metacarpal: no flexion
        else:
            a = shape.splay[f] + art.abduction[f]
            d = np.array([np.sin(a), np.cos(a), 0.0])
            bend = z
            angles = (art.mcp[f], art.pip[f], art.dip[f])
        d, bend = d / np.linalg.norm(d), bend / np.linalg.norm(bend)
        axis = np.cross(d, bend)                          # rotating d about it moves d towards bend
        p, total = root, 0.0
        joints[FINGER_JOINTS[f][0]] = root
        for s in range(3):
            total += angles[s]
            r = rotation(axis, total)
            p = p + shape.lengths[f, s] * (r @ d)
            joints[FINGER_JOINTS[f][s + 1]] = p
            volar[f, s] = r @ bend
    forearm = rotation(x, art.wrist_flex) @ rotation(z, art.wrist_deviation) @ -y
    return Skeleton(joints=joints, volar=volar, forearm=forearm)


def sample_rotation(rng: np.random.Generator, style: Style) -> np.ndarray:
    """Hand frame -> camera frame (x right, y down, z forward). Upright: fingers up in the
    image, palm towards the camera; then yaw (palm/side/back), pitch and in-plane roll."""
    upright = np.diag([1.0, -1.0, -1.0])
    roll = rng.uniform(-np.pi, np.pi) if style.roll_std_deg is None else np.deg2rad(rng.normal(0, style.roll_std_deg))
    yaw = np.deg2rad(rng.uniform(-style.yaw_deg, style.yaw_deg))
    pitch = np.deg2rad(rng.uniform(-style.pitch_deg, style.pitch_deg))
    x, y, z = np.eye(3)
    return rotation(z, roll) @ rotation(x, pitch) @ rotation(y, yaw) @ upright


# -- a posed hand in the camera frame -------------------------------------------------------------
@dataclass
class PosedHand:
    """Camera-frame geometry (mm) of one hand, mirrored already if it is a left hand."""
    joints: np.ndarray
    volar: np.ndarray
    forearm: np.ndarray
    side: str
    shape: HandShape
    sleeve: np.ndarray | None
    sleeve_start: float

    def translated(self, t: np.ndarray) -> "PosedHand":
        return PosedHand(self.joints + t, self.volar, self.forearm, self.side, self.shape, self.sleeve, self.sleeve_start)


def pose_hand(rng: np.random.Generator, style: Style, shape: HandShape, side: str) -> PosedHand:
    """A random articulated hand rotated into the camera frame, centred on the origin. A left
    hand is the mirror image of a right hand (camera x negated)."""
    for _ in range(100):
        skel = articulate(shape, sample_articulation(rng))
        rot = sample_rotation(rng, style)
        forearm = rot @ skel.forearm
        if forearm[2] > -0.6:        # not pointing at the camera
            break
    joints = skel.joints @ rot.T
    centre = (joints.min(0) + joints.max(0)) / 2
    volar = skel.volar @ rot.T
    joints = joints - centre
    if side == "left":
        flip = np.array([-1.0, 1, 1])
        joints, volar, forearm = joints * flip, volar * flip, forearm * flip
    sleeve = rng.uniform(0.05, 0.6, 3) if rng.random() < style.sleeve_prob else None
    return PosedHand(joints, volar, forearm, side, shape, sleeve, rng.uniform(60, 130))


def place(hand: PosedHand, rng: np.random.Generator, focal: float, size: int, box_side: float,
          margin: float, centre_px=None) -> PosedHand:
    """Translate the hand so its joints' projected box has side ~box_side px and lies inside the
    image with `margin` px to spare (or is centred on `centre_px`, which may be off-image)."""
    c = size / 2
    z = 500.0
    for _ in range(4):                                  # depth for the wanted projected size
        uv = project(hand.joints + [0, 0, z], focal, c, c)
        z *= np.ptp(uv, axis=0).max() / box_side
        z = max(z, 80 - hand.joints[:, 2].min())        # keep every joint in front of the camera
    for _ in range(20):
        uv = project(hand.joints + [0, 0, z], focal, c, c)
        lo, hi = uv.min(0), uv.max(0)
        if centre_px is not None:
            shift = np.asarray(centre_px) - (lo + hi) / 2
        else:
            room_lo, room_hi = margin - lo, size - margin - hi
            if np.any(room_lo > room_hi):               # does not fit: move it further away
                z *= 1.1
                continue
            shift = rng.uniform(room_lo, room_hi)
        t = np.array([shift[0] * z / focal, shift[1] * z / focal, z])
        moved = hand.translated(t)
        uv = project(moved.joints, focal, c, c)
        if centre_px is not None or (uv.min() >= margin - 1 and uv.max() <= size - margin + 1):
            return moved
        z *= 1.05
    return moved


def project(xyz: np.ndarray, focal: float, cx: float, cy: float) -> np.ndarray:
    return np.stack([focal * xyz[:, 0] / xyz[:, 2] + cx, focal * xyz[:, 1] / xyz[:, 2] + cy], axis=1)


# -- rasteriser ---------------------------------------------------------------------------------
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
        uv = project(points, f, c, c)
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


# -- lighting and backgrounds -------------------------------------------------------------------
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


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


# -- the source domain: FreiHAND layout ---------------------------------------------------------
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


def freihand_item(task):
    """Worker: render and write one annotation (4 versions + mask, or 1 evaluation image +
    segmap). Returns (xyz metres (21,3), K (3,3))."""
    root, folder, index, n, seed, size = task
    rng = rng_for(seed, f"freihand/{folder}", index)
    canvas, joints, focal = render_source(rng, size)
    mask = np.where(canvas.alpha >= 0.5, 255, 0).astype(np.uint8)
    light = np.array([rng.normal(0, 0.2), rng.normal(-0.2, 0.2), -1.0])    # frontal, one per capture
    if folder == "training":
        for v, version in enumerate(FREIHAND_VERSIONS):
            img = source_version_image(rng, canvas, version, light)
            Image.fromarray(img).save(root / folder / "rgb" / f"{v * n + index:08d}.jpg", quality=92)
        Image.fromarray(mask).save(root / folder / "mask" / f"{index:08d}.jpg", quality=92)
    else:
        img = source_version_image(rng, canvas, FREIHAND_VERSIONS[index % 4], light)
        Image.fromarray(img).save(root / folder / "rgb" / f"{index:08d}.jpg", quality=92)
        Image.fromarray(mask).save(root / folder / "segmap" / f"{index:08d}.png")
    # As released: FreiHAND's K counts pixel centres from 0 (docs/datasets.md), the renderer pixel
    # corners (its principal point size/2 is the centre-convention size/2 - 0.5).
    k = np.array([[focal, 0, size / 2 - 0.5], [0, focal, size / 2 - 0.5], [0, 0, 1]])
    return joints / 1000.0, k


# -- the target domain: RHD layout --------------------------------------------------------------
def render_target(rng: np.random.Generator, size: int, main_side: str):
    """Two hands of one person (same shape and skin): the main one in view, the other smaller,
    further away, beside it or out of the image. -> (canvas, {side: joints mm}, focal, shape)."""
    style = TARGET_STYLE
    focal = size * rng.uniform(*style.focal_per_size)
    shape = sample_shape(rng, style)
    other_side = "left" if main_side == "right" else "right"
    main = place(pose_hand(rng, style, shape, main_side), rng, focal, size,
                 size * rng.uniform(*style.box_per_size), margin=0.06 * size)
    main_uv = project(main.joints, focal, size / 2, size / 2)
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
    uv = project(joints, canvas.focal, canvas.c, canvas.c)
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


def rhd_item(task):
    """Worker: render and write one RHD id (color, mask, depth). Returns its annotation entry."""
    root, folder, index, seed, size = task
    rng = rng_for(seed, f"rhd/{folder}", index)
    main_side = ("left", "right")[index % 2]        # balanced sides
    canvas, hands, focal, shape = render_target(rng, size, main_side)
    image = target_image(rng, canvas, shape.skin)
    radii = joint_radii(shape)
    k = np.array([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1]])
    xyz = np.concatenate([hands["left"][HAND21_TO_RHD], hands["right"][HAND21_TO_RHD]]) / 1000.0
    vis = np.concatenate([visibility(canvas, hands[s], radii)[HAND21_TO_RHD] for s in ("left", "right")])
    uv = project(xyz, focal, size / 2, size / 2)
    Image.fromarray(image).save(root / folder / "color" / f"{index:05d}.png", compress_level=1)
    Image.fromarray(canvas.label).save(root / folder / "mask" / f"{index:05d}.png", compress_level=1)
    Image.fromarray(rhd_depth_png(canvas, rng)).save(root / folder / "depth" / f"{index:05d}.png", compress_level=1)
    return {"xyz": xyz.astype(np.float32), "uv_vis": np.column_stack([uv, vis]).astype(np.float32),
            "K": k.astype(np.float32)}


# -- backgrounds: ImageNet validation layout ----------------------------------------------------
def bundled_photos() -> list[tuple[str, Image.Image]]:
    """scikit-image's bundled photographs, read from its data folder (no fetching)."""
    try:
        import skimage.data
    except ImportError:
        raise click.ClickException("the demo needs scikit-image's bundled photographs: pip install -e '.[demo]'") from None
    folder = Path(skimage.data.__file__).parent
    photos = []
    for name in PHOTOS:
        path = folder / name
        if path.exists():
            with Image.open(path) as im:
                photos.append((name, im.convert("L" if im.mode in ("L", "I;16", "1") else "RGB")))
    if len(photos) < 4:
        raise click.ClickException(f"only {len(photos)} of scikit-image's sample photographs found in {folder}")
    return photos


def write_backgrounds(out: Path, count: int, seed: int) -> None:
    """Random crops/resizes/flips/colour jitter of the bundled photos, saved as
    ILSVRC2012_val_%08d.JPEG (1-based like the release), each shorter side 200..400 px."""
    out.mkdir(parents=True, exist_ok=True)
    photos = bundled_photos()
    for i in range(count):
        rng = rng_for(seed, "imagenet", i)
        name, photo = photos[i % len(photos)]
        w, h = photo.size
        area = rng.uniform(0.25, 1.0) * w * h
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = int(min(w, np.sqrt(area * aspect))), int(min(h, np.sqrt(area / aspect)))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = photo.crop((x0, y0, x0 + cw, y0 + ch))
        shorter = rng.uniform(200, 400)
        scale = shorter / min(cw, ch)
        crop = crop.resize((max(1, round(cw * scale)), max(1, round(ch * scale))), Image.BICUBIC)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        if crop.mode == "RGB":
            arr = np.asarray(crop, np.float32) / 255 * rng.uniform(0.8, 1.2, 3)
            crop = Image.fromarray(to_uint8(arr))
        crop.save(out / f"ILSVRC2012_val_{i + 1:08d}.JPEG", quality=90)


# -- driver -------------------------------------------------------------------------------------
@dataclass
class DemoPaths:
    source: Path        # FreiHAND_pub_v2 (for `dataprep freihand`)
    target: Path        # RHD_published_v2 (for `dataprep rhd`)
    backgrounds: Path   # ILSVRC2012_val (for `dataprep imagenet`)


def _map(fn, tasks, workers: int, desc: str):
    pool = mp.get_context("fork").Pool(workers) if workers > 1 and len(tasks) > 1 else None
    try:
        results = pool.imap(fn, tasks, chunksize=4) if pool else map(fn, tasks)
        out = []
        for i, r in enumerate(results, 1):
            out.append(r)
            if i % 500 == 0 or i == len(tasks):
                print(f"  {desc}: {i}/{len(tasks)}", file=sys.stderr)
        return out
    finally:
        if pool:
            pool.close()
            pool.join()


def generate_demo(out_root, source_size: int = 1000, target_train: int = 1000, target_test: int = 250,
                  seed: int = 0, image_size: tuple[int, int] = (224, 320), source_test: int | None = None,
                  backgrounds: int = 64, workers: int | None = None) -> DemoPaths:
    """Write the three demo trees under out_root and return their paths.

    source_size: FreiHAND training annotations (4 images each); source_test: evaluation images
    (default source_size // 8, at least 1); target_train / target_test: RHD training / evaluation
    ids; image_size: (FreiHAND side, RHD side) in pixels; backgrounds: photographs written."""
    out_root = Path(out_root)
    source_test = max(1, source_size // 8) if source_test is None else source_test
    for name, n in (("source_size", source_size), ("target_train", target_train), ("target_test", target_test),
                    ("source_test", source_test), ("backgrounds", backgrounds)):
        if n < 1:
            raise ValueError(f"{name} must be at least 1, got {n}")
    src_size, tgt_size = image_size
    if min(src_size, tgt_size) < 32:
        raise ValueError(f"image sizes must be at least 32 px, got {image_size}")
    workers = workers or len(os.sched_getaffinity(0))
    paths = DemoPaths(out_root / "FreiHAND_pub_v2", out_root / "RHD_published_v2", out_root / "ILSVRC2012_val")

    for folder, n in (("training", source_size), ("evaluation", source_test)):
        for sub in ("rgb", "mask" if folder == "training" else "segmap"):
            (paths.source / folder / sub).mkdir(parents=True, exist_ok=True)
        tasks = [(paths.source, folder, i, n, seed, src_size) for i in range(n)]
        results = _map(freihand_item, tasks, workers, f"FreiHAND {folder}")
        xyz = [r[0] for r in results]
        ks = [r[1] for r in results]
        scale = [float(np.linalg.norm(x[9] - x[10])) for x in xyz]
        (paths.source / f"{folder}_xyz.json").write_text(json.dumps([x.tolist() for x in xyz]))
        (paths.source / f"{folder}_K.json").write_text(json.dumps([k.tolist() for k in ks]))
        (paths.source / f"{folder}_scale.json").write_text(json.dumps(scale))

    for folder, n in (("training", target_train), ("evaluation", target_test)):
        for sub in ("color", "mask", "depth"):
            (paths.target / folder / sub).mkdir(parents=True, exist_ok=True)
        tasks = [(paths.target, folder, i, seed, tgt_size) for i in range(n)]
        anno = dict(enumerate(_map(rhd_item, tasks, workers, f"RHD {folder}")))
        # As released: a Python-2-era protocol-2 pickle naming numpy.core.multiarray.
        blob = pickle.dumps(anno, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        (paths.target / folder / f"anno_{folder}.pickle").write_bytes(blob)

    write_backgrounds(paths.backgrounds, backgrounds, seed)
    (out_root / "demo.json").write_text(json.dumps({
        "seed": seed, "source_size": source_size, "source_test": source_test, "target_train": target_train,
        "target_test": target_test, "image_size": list(image_size), "backgrounds": backgrounds,
        "source_style": SOURCE_STYLE.name, "target_style": TARGET_STYLE.name,
        "note": "procedurally rendered hands; FreiHAND layout without training_{mano,verts}.json"}, indent=1))
    return paths


def contact_sheet(paths: DemoPaths, out_png, columns: int = 8, tile: int = 128) -> Path:
    """A PNG of source images (all 4 versions of two annotations), target images with their
    projected visible joints, and backgrounds: a quick look at both domains."""
    def tile_of(path, joints_uv=None, size=None, vis=None):
        im = Image.open(path).convert("RGB")
        if joints_uv is not None:
            draw = ImageDraw.Draw(im)
            for f in range(5):
                chain = [0] + list(FINGER_JOINTS[f])
                for a, b in zip(chain[:-1], chain[1:]):
                    draw.line([tuple(joints_uv[a]), tuple(joints_uv[b])], fill=(255, 255, 0), width=1)
            for j, (u, v) in enumerate(joints_uv):
                colour = (0, 255, 0) if vis is None or vis[j] else (255, 0, 0)
                draw.ellipse((u - 1.5, v - 1.5, u + 1.5, v + 1.5), fill=colour)
        return im.resize((tile, tile), Image.BILINEAR)

    tiles = []
    xyz = np.array(json.loads((paths.source / "training_xyz.json").read_text()))
    ks = np.array(json.loads((paths.source / "training_K.json").read_text()))
    n = len(xyz)
    for a in range(min(2, n)):
        for v in range(4):
            tiles.append(tile_of(paths.source / "training" / "rgb" / f"{v * n + a:08d}.jpg"))
    for a in range(min(columns, n)):
        uv = project(xyz[a] * 1000, ks[a][0][0], ks[a][0][2] + 0.5, ks[a][1][2] + 0.5)    # PIL draws in corners
        tiles.append(tile_of(paths.source / "training" / "rgb" / f"{n + a:08d}.jpg", uv))
    anno = pickle.loads((paths.target / "training" / "anno_training.pickle").read_bytes())
    ids = sorted(anno)[:2 * columns]
    for i in ids:
        tiles.append(tile_of(paths.target / "training" / "color" / f"{i:05d}.png"))
    for i in ids[:columns]:
        e = anno[i]
        labels = np.asarray(Image.open(paths.target / "training" / "mask" / f"{i:05d}.png"))
        main = 0 if ((labels >= 2) & (labels <= 17)).sum() > (labels >= 18).sum() else 21
        raw = np.arange(main, main + 21)[RHD_PERM]
        tiles.append(tile_of(paths.target / "training" / "color" / f"{i:05d}.png", e["uv_vis"][raw, :2], vis=e["uv_vis"][raw, 2] > 0))
    for p in sorted(paths.backgrounds.glob("*.JPEG"))[:columns]:
        tiles.append(tile_of(p))
    rows = (len(tiles) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * tile, rows * tile), (255, 255, 255))
    for k, t in enumerate(tiles):
        sheet.paste(t, ((k % columns) * tile, (k // columns) * tile))
    sheet.save(out_png)
    return Path(out_png)


@click.command("demo")
@click.argument("out_root", type=click.Path(file_okay=False, path_type=Path))
@click.option("--source-size", type=int, default=1000, show_default=True, help="FreiHAND training annotations (4 image versions each)")
@click.option("--source-test", type=int, default=None, help="FreiHAND evaluation images [default: source-size // 8]")
@click.option("--target-train", type=int, default=1000, show_default=True, help="RHD training ids")
@click.option("--target-test", type=int, default=250, show_default=True, help="RHD evaluation ids")
@click.option("--image-size", type=(int, int), default=(224, 320), show_default=True, help="image side of the source (FreiHAND) and target (RHD) sets")
@click.option("--backgrounds", type=int, default=64, show_default=True, help="ImageNet-layout background photographs")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=int, default=None, help="processes [default: the CPUs available]")
@click.option("--sheet", type=click.Path(dir_okay=False, path_type=Path), default=None, help="also write a contact sheet PNG here")
def cli(out_root, source_size, source_test, target_train, target_test, image_size, backgrounds, seed, workers, sheet):
    """Generate demo data: OUT_ROOT/FreiHAND_pub_v2 (labelled source, FreiHAND layout),
    OUT_ROOT/RHD_published_v2 (target, RHD layout, left and right hands) and
    OUT_ROOT/ILSVRC2012_val (bundled photographs as backgrounds).

    Hands are rendered from 3D skeletons, so joints, intrinsics and masks are exact; the two
    domains differ in skin, lighting, backgrounds, hand shape, pose, camera and image noise."""
    if seed < 0:
        raise click.BadParameter("must be >= 0", param_hint="--seed")
    start = time.time()
    try:
        paths = generate_demo(out_root, source_size, target_train, target_test, seed, image_size,
                              source_test=source_test, backgrounds=backgrounds, workers=workers)
    except ValueError as e:
        raise click.ClickException(str(e))
    click.echo(f"source {paths.source}\ntarget {paths.target}\nbackgrounds {paths.backgrounds}\n"
               f"done in {time.time() - start:.1f} s")
    if sheet:
        click.echo(f"contact sheet {contact_sheet(paths, sheet)}")
