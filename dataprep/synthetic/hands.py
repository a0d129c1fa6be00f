"""The hand model of the synthetic data: per-hand shape (bone lengths, radii, a style per
domain), articulation, and a posed hand placed in front of the camera (docs/datasets.md)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shards.camera import project


FINGER_JOINTS = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16], [17, 18, 19, 20]])


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
        uv = project(hand.joints + [0, 0, z], (focal, focal, c, c))
        z *= np.ptp(uv, axis=0).max() / box_side
        z = max(z, 80 - hand.joints[:, 2].min())        # keep every joint in front of the camera
    for _ in range(20):
        uv = project(hand.joints + [0, 0, z], (focal, focal, c, c))
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
        uv = project(moved.joints, (focal, focal, c, c))
        if centre_px is not None or (uv.min() >= margin - 1 and uv.max() <= size - margin + 1):
            return moved
        z *= 1.05
    return moved
