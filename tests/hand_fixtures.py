"""Known hands for converter fixtures: a plausible right-hand skeleton in hand21 order placed in
front of a camera, and drawing helpers to check where pixels land after cropping."""
import numpy as np

# hand21 in a hand frame, millimetres: wrist at origin, fingers along -y (up in the image).
_FINGER_BASES = {"thumb": (-30, -20), "index": (-18, -80), "middle": (0, -85), "ring": (16, -80), "little": (30, -70)}
_FINGER_DIRS = {"thumb": (-0.7, -0.7), "index": (-0.1, -1), "middle": (0, -1), "ring": (0.1, -1), "little": (0.25, -1)}
_SEG = (25, 18, 15, 0)


def hand21_mm(center_mm=(0.0, 0.0, 500.0), scale: float = 1.0, rotate_deg: float = 0.0) -> np.ndarray:
    """21 x 3 camera-frame millimetres, hand21 order; every joint distinct."""
    pts = [np.zeros(3)]
    for i, finger in enumerate(("thumb", "index", "middle", "ring", "little")):
        base = np.array([*_FINGER_BASES[finger], 5.0 * i])
        d = np.array([*_FINGER_DIRS[finger], 0.0])
        d /= np.linalg.norm(d)
        p = base.copy()
        for seg in (0, 25, 20, 16):
            p = p + d * seg
            pts.append(p.copy())
    pts = np.array(pts) * scale
    a = np.deg2rad(rotate_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    return pts @ rot.T + np.asarray(center_mm)


def project(xyz_mm: np.ndarray, fx, fy, cx, cy) -> np.ndarray:
    return np.stack([fx * xyz_mm[:, 0] / xyz_mm[:, 2] + cx, fy * xyz_mm[:, 1] / xyz_mm[:, 2] + cy], 1)


def draw_dot(img: np.ndarray, uv, colour=(255, 0, 255), radius: int = 2) -> None:
    """Paint a square dot centred on continuous coordinate uv (pixel (i, j) covers [i, i+1))."""
    u, v = int(np.floor(uv[0])), int(np.floor(uv[1]))
    img[max(v - radius, 0):v + radius + 1, max(u - radius, 0):u + radius + 1] = colour


def draw_disk(img: np.ndarray, uv, colour=(255, 0, 255), radius: float = 3.0) -> None:
    """Paint the pixels whose centres lie within `radius` of continuous coordinate uv (pixel
    (i, j) covers [i, i+1)): unlike draw_dot, its centroid follows uv to a small fraction of a pixel."""
    h, w = img.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    img[(xx + 0.5 - uv[0]) ** 2 + (yy + 0.5 - uv[1]) ** 2 <= radius * radius] = colour


def find_dot(img: np.ndarray, colour=(255, 0, 255), tol: int = 60) -> np.ndarray:
    """Centroid (continuous coordinates, pixel centres at +0.5) of pixels close to `colour`."""
    d = np.abs(img.astype(int) - np.array(colour)).max(axis=2)
    ys, xs = np.nonzero(d < tol)
    assert len(xs), "dot not found"
    return np.array([xs.mean() + 0.5, ys.mean() + 0.5])
