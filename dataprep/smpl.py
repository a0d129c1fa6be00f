"""Optional h36m17 joints from the SMPL mesh, for users who bring the licensed SMPL model files
and an H36M joint regressor: the model posed with a sample's pose and shape, placed rigidly on
the dataset's own joints, then the regressor applied to its vertices (docs/datasets.md)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shards.schema import SampleError

from .bodies import H36M17, LEFT_FIRST_TO_H36M17, SMPL24, SMPL_APPROXIMATION, SMPL_EXACT_H36M, SMPL_EXACT_SMPL
from .common import load_pickle
from .fitting import rigid_fit


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


def mesh_from_options(smpl_models, h36m_regressor, regressor_order, smpl_gender, max_fit_mm) -> MeshJoints | None:
    """The mesh mapping the converters' --smpl-models ... options ask for, or None (the SMPL-24
    subset). ValueError when only one of the two files is given; SampleError when they cannot be
    loaded."""
    if (smpl_models is None) != (h36m_regressor is None):
        raise ValueError("--smpl-models and --h36m-regressor go together")
    if smpl_models is None:
        return None
    genders = ("male", "female") if smpl_gender == "gendered" else ("neutral",)
    return load_mesh_joints(smpl_models, h36m_regressor, regressor_order, genders, max_fit_mm)
