"""Code the body converters share: joint tables (SMPL-24 -> h36m17, side flips), the
forward-direction side check, crops around a body, MATLAB files, and the
optional SMPL mesh + H36M joint regressor path for users who bring the licensed model files.

Joint orders (docs/datasets.md):
h36m17   0 pelvis, 1 r_hip, 2 r_knee, 3 r_ankle, 4 l_hip, 5 l_knee, 6 l_ankle, 7 spine, 8 thorax,
         9 neck/nose, 10 head, 11 l_shoulder, 12 l_elbow, 13 l_wrist, 14 r_shoulder, 15 r_elbow, 16 r_wrist
SMPL-24  0 pelvis, 1 l_hip, 2 r_hip, 3 spine1, 4 l_knee, 5 r_knee, 6 spine2, 7 l_ankle, 8 r_ankle,
         9 spine3, 10 l_foot, 11 r_foot, 12 neck, 13 l_collar, 14 r_collar, 15 head, 16 l_shoulder,
         17 r_shoulder, 18 l_elbow, 19 r_elbow, 20 l_wrist, 21 r_wrist, 22 l_hand, 23 r_hand
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import click
import h5py
import numpy as np
import scipy.io

from shards.schema import JOINT_ORDERS, Sample, SampleError

from .common import Crop, crop_around, load_pickle
from .lens import Distortion, undistorted_crop

H36M17 = JOINT_ORDERS["h36m17"]
SMPL24 = ("pelvis", "l_hip", "r_hip", "spine1", "l_knee", "r_knee", "spine2", "l_ankle", "r_ankle", "spine3",
          "l_foot", "r_foot", "neck", "l_collar", "r_collar", "head", "l_shoulder", "r_shoulder", "l_elbow",
          "r_elbow", "l_wrist", "r_wrist", "l_hand", "r_hand")

# h36m17[SMPL_EXACT_H36M] = smpl24[SMPL_EXACT_SMPL]: the joints both skeletons define.
SMPL_EXACT_H36M = np.array([0, 1, 2, 3, 4, 5, 6, 11, 12, 13, 14, 15, 16])
SMPL_EXACT_SMPL = np.array([0, 2, 5, 8, 1, 4, 7, 16, 18, 20, 17, 19, 21])
# Spine, thorax, neck/nose and head have no SMPL counterpart. Chosen by bone length: H36M's
# pelvis->spine (~233 mm) ~ SMPL pelvis->spine2, pelvis->thorax (~490 mm) ~ pelvis->neck;
# neck/nose sits ~120 mm above the thorax like SMPL's head joint, and H36M's head joint
# (near the crown) ~ one neck->head length beyond SMPL's head joint.
SMPL_APPROXIMATION = {
    "spine": "smpl spine2 (6)",
    "thorax": "smpl neck (12)",
    "neck_nose": "smpl head (15)",
    "head": "smpl head (15) + 1.0 x (head (15) - neck (12))",
}
APPROXIMATED_H36M = [7, 8, 9, 10]
# Left <-> right relabelling (a mirror image swaps which joint is anatomically left).
SMPL_FLIP = np.array([0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10, 12, 14, 13, 15, 17, 16, 19, 18, 21, 20, 23, 22])
H36M17_FLIP = np.array([0, 4, 5, 6, 1, 2, 3, 7, 8, 9, 10, 14, 15, 16, 11, 12, 13])
# SPIN/HMR/VIBE's "H36M-17" (SPIN's J_regressor_h36m.npy) puts the left leg first.
LEFT_FIRST_TO_H36M17 = np.array([0, 4, 5, 6, 1, 2, 3, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16])

BODY_MIN_SIDE = 64.0   # px: smallest crop side in the original image


def smpl24_to_h36m17(j24: np.ndarray) -> np.ndarray:
    """(..., 24, 3) SMPL joints -> (..., 17, 3) h36m17: the exact subset plus the documented
    approximations (SMPL_APPROXIMATION) for spine, thorax, neck/nose and head."""
    j24 = np.asarray(j24, np.float64)
    out = np.empty(j24.shape[:-2] + (17, j24.shape[-1]))
    out[..., SMPL_EXACT_H36M, :] = j24[..., SMPL_EXACT_SMPL, :]
    out[..., 7, :] = j24[..., 6, :]
    out[..., 8, :] = j24[..., 12, :]
    out[..., 9, :] = j24[..., 15, :]
    out[..., 10, :] = 2.0 * j24[..., 15, :] - j24[..., 12, :]
    return out


def forward_direction(j17: np.ndarray) -> np.ndarray:
    """Unit vector the body faces: cross(thorax - pelvis, r_hip - l_hip). A left/right swap
    (or a mirror) turns it around, so it checks sides geometrically."""
    f = np.cross(j17[8] - j17[0], j17[1] - j17[4])
    return f / np.linalg.norm(f)


def crop_sample(crop: Crop, key: str, image: np.ndarray, joints: np.ndarray, uv: np.ndarray, camera,
                meta: dict, mask: np.ndarray | None = None, distort: Distortion | None = None) -> Sample:
    """The stored body sample: image, camera-frame joints (mm) and their projection `uv`
    (original pixels, pinhole `camera` = fx, fy, cx, cy) taken through `crop`; every joint
    labelled. `mask` is already cropped. With `distort` (the lens model of the original image)
    the crop is resampled to the pinhole camera (dataprep.lens)."""
    cropped = crop.image(image) if distort is None else undistorted_crop(image, crop, distort)
    return Sample(key=key, image=cropped, mask=mask, joints3d_mm=crop.points3d(joints),
                  joints2d_px=crop.points(uv), visible=np.ones(len(joints), bool),
                  intrinsics=crop.intrinsics(*camera), meta=meta)

def body_crop(uv: np.ndarray, size: int, context: float) -> Crop:
    """Square crop around all 2D joints of one body (the head joint is near the crown and the
    ankles at the feet, so `context` x their box holds the whole person)."""
    return crop_around(np.asarray(uv, np.float64), size, context, min_side=BODY_MIN_SIDE)


def key_part(text: str) -> str:
    """Sample keys may hold no '.' or '/' (DALI splits the extension at the first dot)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


def pinhole(xyz: np.ndarray, fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.stack([fx * xyz[:, 0] / xyz[:, 2] + cx, fy * xyz[:, 1] / xyz[:, 2] + cy], axis=1)


def in_front(xyz_mm: np.ndarray, file, sample: str) -> None:
    if np.any(xyz_mm[:, 2] <= 0):
        raise SampleError("a joint lies at or behind the camera (z <= 0)", file=str(file), sample=sample)


def fit_intrinsics(uv: np.ndarray, xyz: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares pinhole (fx, fy, cx, cy) from 2D<->3D correspondences (u z = fx x + cx z,
    as public 3DHP/H36M code does) and the largest reprojection residual in pixels."""
    uv, xyz = uv.reshape(-1, 2), xyz.reshape(-1, 3)
    z = xyz[:, 2]
    fx, cx = np.linalg.lstsq(np.stack([xyz[:, 0], z], 1), uv[:, 0] * z, rcond=None)[0]
    fy, cy = np.linalg.lstsq(np.stack([xyz[:, 1], z], 1), uv[:, 1] * z, rcond=None)[0]
    k = np.array([fx, fy, cx, cy])
    return k, float(np.abs(pinhole(xyz, *k) - uv).max())


# -- MATLAB files ------------------------------------------------------------------------------
def load_mat_v5(path: Path, what: str, variables: list[str] | None = None, sample: str | None = None) -> dict:
    """A MATLAB v5 .mat file -> {name: array} (scipy.io; cell arrays become object arrays)."""
    try:
        return scipy.io.loadmat(str(path), variable_names=variables, squeeze_me=False)
    except FileNotFoundError:
        raise SampleError(f"{what} missing", file=str(path), sample=sample) from None
    except NotImplementedError:
        raise SampleError(f"{what} is a MATLAB v7.3 (HDF5) file, expected v5", file=str(path), sample=sample) from None
    except Exception as e:
        raise SampleError(f"unreadable {what}: {e}", file=str(path), sample=sample) from None


def open_mat73(path: Path, what: str, sample: str | None = None) -> h5py.File:
    """A MATLAB v7.3 .mat file (HDF5) opened read-only with h5py. MATLAB stores arrays
    column-major, so h5py sees every array with its dimensions reversed."""
    if not Path(path).exists():
        raise SampleError(f"{what} missing", file=str(path), sample=sample)
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise SampleError(f"unreadable {what} (not MATLAB v7.3 / HDF5?): {e}", file=str(path), sample=sample) from None


def mat73_dataset(f: h5py.File, name: str, what: str, sample: str | None = None) -> np.ndarray:
    if name not in f:
        raise SampleError(f"{what} lacks {name!r}", file=f.filename, sample=sample)
    return np.asarray(f[name][()])


# -- optional: SMPL mesh + a user-supplied H36M joint regressor --------------------------------
SMPL_KEYS = ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table")


def rodrigues(axis_angle: np.ndarray) -> np.ndarray:
    """(N, 3) axis-angle -> (N, 3, 3) rotation matrices."""
    theta = np.linalg.norm(axis_angle, axis=1, keepdims=True)
    k = axis_angle / np.maximum(theta, 1e-12)
    kx, ky, kz = k.T
    zero = np.zeros_like(kx)
    skew = np.stack([zero, -kz, ky, kz, zero, -kx, -ky, kx, zero], 1).reshape(-1, 3, 3)
    s, c = np.sin(theta)[:, :, None], np.cos(theta)[:, :, None]
    return np.eye(3) + s * skew + (1 - c) * skew @ skew


@dataclass
class SmplModel:
    """The SMPL body model from user-supplied files (.npz with plain arrays, or a pickle of plain
    numpy arrays; the original chumpy pickles must be converted first)."""
    v_template: np.ndarray   # V x 3, metres
    shapedirs: np.ndarray    # V x 3 x B
    posedirs: np.ndarray     # V x 3 x 207
    j_regressor: np.ndarray  # 24 x V
    weights: np.ndarray      # V x 24
    parents: np.ndarray      # 24, parents[0] = -1
    path: str

    @classmethod
    def load(cls, path: Path) -> "SmplModel":
        path = Path(path)
        if path.suffix == ".npz":
            try:
                with np.load(path, allow_pickle=False) as z:
                    data = {k: z[k] for k in z.files}
            except FileNotFoundError:
                raise SampleError("SMPL model file missing", file=str(path)) from None
            except (OSError, ValueError) as e:
                raise SampleError(f"unreadable SMPL model: {e}", file=str(path)) from None
        else:
            try:
                data = load_pickle(path)
            except SampleError as e:
                raise SampleError(f"{e} -- SMPL pickles holding chumpy or scipy.sparse objects are refused: save "
                                  f"{', '.join(SMPL_KEYS)} as plain arrays with numpy.savez") from None
        if not isinstance(data, dict) or any(k not in data for k in SMPL_KEYS):
            raise SampleError(f"SMPL model must hold {', '.join(SMPL_KEYS)}", file=str(path))
        try:
            arr = {k: np.asarray(data[k], np.float64) for k in SMPL_KEYS}
        except (TypeError, ValueError) as e:
            raise SampleError(f"SMPL model arrays are not numeric: {e}", file=str(path)) from None
        v = arr["v_template"].shape[0]
        shapes_ok = (arr["v_template"].shape == (v, 3) and arr["shapedirs"].shape[:2] == (v, 3)
                     and arr["posedirs"].shape == (v, 3, 207) and arr["J_regressor"].shape == (24, v)
                     and arr["weights"].shape == (v, 24) and arr["kintree_table"].shape == (2, 24))
        if not shapes_ok:
            raise SampleError("SMPL model arrays have unexpected shapes "
                              f"{ {k: a.shape for k, a in arr.items()} }", file=str(path))
        parents = arr["kintree_table"][0].astype(np.int64)
        parents[0] = -1     # stored as 2**32 - 1
        return cls(arr["v_template"], arr["shapedirs"], arr["posedirs"], arr["J_regressor"], arr["weights"],
                   parents, str(path))

    def forward(self, pose: np.ndarray, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Linear blend skinning: pose (72 axis-angle), betas (<= B) -> (24 joints, V vertices),
        metres, in the model frame (no translation)."""
        nb = min(len(betas), self.shapedirs.shape[2])
        v_shaped = self.v_template + self.shapedirs[:, :, :nb] @ np.asarray(betas[:nb], np.float64)
        rest = self.j_regressor @ v_shaped
        rot = rodrigues(np.asarray(pose, np.float64).reshape(24, 3))
        v_posed = v_shaped + self.posedirs @ (rot[1:] - np.eye(3)).ravel()
        world = np.zeros((24, 4, 4))
        for i in range(24):
            local = np.eye(4)
            local[:3, :3] = rot[i]
            p = self.parents[i]
            local[:3, 3] = rest[i] - (rest[p] if p >= 0 else 0.0)
            world[i] = world[p] @ local if p >= 0 else local
        joints = world[:, :3, 3].copy()
        skin = world.copy()
        skin[:, :3, 3] -= np.einsum("jab,jb->ja", world[:, :3, :3], rest)   # transforms of rest-pose points
        per_vertex = np.einsum("vj,jab->vab", self.weights, skin)
        verts = np.einsum("vab,vb->va", per_vertex[:, :3, :3], v_posed) + per_vertex[:, :3, 3]
        return joints, verts


def load_h36m_regressor(path: Path, order: str, num_vertices: int) -> np.ndarray:
    """A (17, V) H36M joint regressor (.npy) -> rows in h36m17 order. order 'spin' = SPIN's
    J_regressor_h36m.npy (left leg first), 'h36m17' = already ours."""
    try:
        reg = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise SampleError("joint regressor file missing", file=str(path)) from None
    except (OSError, ValueError) as e:
        raise SampleError(f"unreadable joint regressor: {e}", file=str(path)) from None
    if reg.shape != (17, num_vertices):
        raise SampleError(f"joint regressor has shape {reg.shape}, expected (17, {num_vertices})", file=str(path))
    reg = np.asarray(reg, np.float64)
    return reg[LEFT_FIRST_TO_H36M17] if order == "spin" else reg


def rigid_fit(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation (det +1) and translation taking src points onto dst (Kabsch, no scale)."""
    ms, md = src.mean(0), dst.mean(0)
    u, _, vt = np.linalg.svd((src - ms).T @ (dst - md))
    d = np.sign(np.linalg.det(vt.T @ u.T))
    r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return r, md - r @ ms


@dataclass
class MeshJoints:
    """h36m17 from an SMPL mesh: the model posed with the sample's pose and shape, placed rigidly
    onto the dataset's own 24 joints (so any world/global-rotation convention is absorbed; the
    residual shows whether the model files match the data), then the H36M regressor."""
    models: dict            # gender -> SmplModel
    regressor: np.ndarray   # 17 x V, h36m17 order
    max_fit_mm: float

    def h36m17(self, gender: str, pose, betas, joints24_world_m: np.ndarray, file, sample: str) -> tuple[np.ndarray, float]:
        """-> (17 x 3 world metres, fit residual mm)."""
        if gender not in self.models:
            raise SampleError(f"no SMPL model for gender {gender!r} (have {sorted(self.models)})", file=str(file), sample=sample)
        joints, verts = self.models[gender].forward(pose, betas)
        r, t = rigid_fit(joints, joints24_world_m)
        residual_mm = 1000.0 * float(np.linalg.norm(joints @ r.T + t - joints24_world_m, axis=1).max())
        if residual_mm > self.max_fit_mm:
            raise SampleError(f"SMPL model {self.models[gender].path} posed with this sample's pose/shape misses "
                              f"the dataset's joints by {residual_mm:.1f} mm (> {self.max_fit_mm} mm): wrong model "
                              "files or gender?", file=str(file), sample=sample)
        return self.regressor @ (verts @ r.T + t), residual_mm


def load_mesh_joints(smpl_dir: Path, regressor: Path, order: str, genders: tuple[str, ...],
                     max_fit_mm: float) -> MeshJoints:
    """SMPL_{NEUTRAL,MALE,FEMALE}.npz (or .pkl) from `smpl_dir` for the genders asked for."""
    models = {}
    for g in genders:
        found = [smpl_dir / f"SMPL_{g.upper()}{ext}" for ext in (".npz", ".pkl")]
        path = next((p for p in found if p.exists()), None)
        if path is None:
            raise SampleError(f"SMPL model for {g} missing (looked for {[p.name for p in found]})", file=str(smpl_dir))
        models[g] = SmplModel.load(path)
    n = {m.v_template.shape[0] for m in models.values()}
    if len(n) != 1:
        raise SampleError(f"SMPL models have different vertex counts {sorted(n)}", file=str(smpl_dir))
    return MeshJoints(models, load_h36m_regressor(regressor, order, n.pop()), max_fit_mm)


def mesh_manifest(mesh: MeshJoints | None, smpl_dir, regressor, order) -> dict:
    """What the manifest records about the SMPL-24 -> h36m17 mapping."""
    if mesh is None:
        return {"joint_mapping": "smpl24 subset", "smpl_exact": {H36M17[h]: SMPL24[s] for h, s in zip(SMPL_EXACT_H36M, SMPL_EXACT_SMPL)},
                "smpl_approximation": SMPL_APPROXIMATION}
    return {"joint_mapping": "h36m regressor on the SMPL mesh", "smpl_models": {g: m.path for g, m in mesh.models.items()},
            "h36m_regressor": str(regressor), "regressor_order": order, "max_fit_mm": mesh.max_fit_mm,
            "smpl_model_dir": str(smpl_dir)}


def mesh_options(f):
    """Click options of the SMPL mesh + H36M regressor mapping (3DPW, SURREAL)."""
    opts = [
        click.option("--smpl-models", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
                     help="folder with SMPL_{MALE,FEMALE,NEUTRAL}.npz (user-supplied, licensed) for the mesh regressor mapping"),
        click.option("--h36m-regressor", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                     help="(17, 6890) H36M joint regressor .npy (e.g. SPIN's J_regressor_h36m.npy) applied to the SMPL mesh"),
        click.option("--regressor-order", type=click.Choice(["spin", "h36m17"]), default="spin", show_default=True,
                     help="row order of the regressor: spin = left leg first (SPIN/HMR/VIBE), h36m17 = ours"),
        click.option("--smpl-gender", type=click.Choice(["gendered", "neutral"]), default="gendered", show_default=True,
                     help="mesh option: each body's gendered model (the datasets' ground truth) or the neutral one"),
        click.option("--max-fit-mm", type=float, default=25.0, show_default=True,
                     help="mesh option: largest allowed distance between the posed model's joints and the dataset's"),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def mesh_from_options(smpl_models, h36m_regressor, regressor_order, smpl_gender, max_fit_mm) -> MeshJoints | None:
    if (smpl_models is None) != (h36m_regressor is None):
        raise click.UsageError("--smpl-models and --h36m-regressor go together")
    if smpl_models is None:
        return None
    genders = ("male", "female") if smpl_gender == "gendered" else ("neutral",)
    try:
        return load_mesh_joints(smpl_models, h36m_regressor, regressor_order, genders, max_fit_mm)
    except SampleError as e:
        raise click.ClickException(str(e))
