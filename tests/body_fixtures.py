"""Known bodies for the body converter fixtures: one named ground-truth skeleton written out in
each dataset's raw joint order (from the joint *names*, independently of the converters' index
tables), small real files in the datasets' formats (videos via PyAV, MATLAB v5 / v7.3, Python 2
pickles), and the geometric checks every converter test runs on its output."""
import contextlib
import pickle
import struct

import av
import h5py
import numpy as np

from shards import project

# The skeleton in its own frame: (right, forward, up) millimetres from the pelvis. Arms differ
# left to right so that any swap changes values, and the nose/toes point forward.
BODY = {
    "pelvis": (0, 0, 0), "r_hip": (90, 0, -30), "l_hip": (-90, 0, -30),
    "r_knee": (100, 30, -460), "l_knee": (-100, 30, -460),
    "r_ankle": (105, 0, -890), "l_ankle": (-105, 0, -890),
    "r_foot": (108, 70, -930), "l_foot": (-108, 70, -930),
    "r_toe": (110, 150, -940), "l_toe": (-110, 150, -940),
    "spine_low": (0, -15, 110), "spine_mid": (0, -20, 240), "chest": (0, -10, 330), "upper_chest": (0, -5, 420),
    "thorax": (0, 0, 490), "neck_base": (0, 10, 520),
    "nose": (0, 100, 610), "head_centre": (0, 20, 620), "head_top": (0, 10, 740),
    "r_collar": (50, 0, 480), "l_collar": (-50, 0, 480),
    "r_shoulder": (180, 0, 470), "l_shoulder": (-180, 0, 470),
    "r_elbow": (210, 40, 200), "l_elbow": (-220, -20, 190),
    "r_wrist": (230, 160, 20), "l_wrist": (-240, 60, -40),
    "r_hand": (235, 220, -30), "l_hand": (-245, 90, -110),
}

# h36m17 (ours) by name.
H36M17_NAMES = ["pelvis", "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "spine_mid", "thorax",
                "nose", "head_top", "l_shoulder", "l_elbow", "l_wrist", "r_shoulder", "r_elbow", "r_wrist"]
# Human3.6M's 32 (Hip, RHip, RKnee, RFoot, RToeBase, Site, LHip, ..., Spine, Spine1, Neck, Head, Site,
# LShoulder, LArm, LForeArm, LHand, ..., RShoulder, RArm, RForeArm, RHand, ...).
H36M32_NAMES = ["pelvis", "r_hip", "r_knee", "r_ankle", "r_foot", "r_toe", "l_hip", "l_knee", "l_ankle", "l_foot",
                "l_toe", "spine_low", "spine_mid", "thorax", "nose", "head_top", "thorax", "l_shoulder", "l_elbow",
                "l_wrist", "l_hand", "l_hand", "l_wrist", "l_hand", "thorax", "r_shoulder", "r_elbow", "r_wrist",
                "r_hand", "r_hand", "r_wrist", "r_hand"]
SMPL24_NAMES = ["pelvis", "l_hip", "r_hip", "spine_low", "l_knee", "r_knee", "spine_mid", "l_ankle", "r_ankle", "chest",
                "l_foot", "r_foot", "neck_base", "l_collar", "r_collar", "head_centre", "l_shoulder", "r_shoulder",
                "l_elbow", "r_elbow", "l_wrist", "r_wrist", "l_hand", "r_hand"]
# MPI-INF-3DHP's 28 (spine3, spine4, spine2, spine, pelvis, neck, head, head_top, left_clavicle, ...).
MPI28_NAMES = ["chest", "upper_chest", "spine_low", "spine_mid", "pelvis", "thorax", "nose", "head_top",
               "l_collar", "l_shoulder", "l_elbow", "l_wrist", "l_hand", "r_collar", "r_shoulder", "r_elbow",
               "r_wrist", "r_hand", "l_hip", "l_knee", "l_ankle", "l_foot", "l_toe", "r_hip", "r_knee", "r_ankle",
               "r_foot", "r_toe"]
# The 3DHP test set's 17 (head_top, neck, r_shoulder, ..., pelvis, spine, head).
MPI17_NAMES = ["head_top", "thorax", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist", "r_hip",
               "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "pelvis", "spine_mid", "nose"]

RED, GREEN, BLUE = (230, 30, 30), (30, 220, 30), (30, 30, 230)


def body_axes(yaw_deg: float, up=(0.0, -1.0, 0.0), ref=(0.0, 0.0, -1.0)):
    """(right, forward, up) unit vectors for a body standing along `up`, facing `ref` turned by yaw
    about `up`. forward = cross(up, right): the identity the side check relies on."""
    up = np.asarray(up, float) / np.linalg.norm(up)
    ref = np.asarray(ref, float)
    ref = ref - ref @ up * up
    ref /= np.linalg.norm(ref)
    a = np.deg2rad(yaw_deg)
    forward = np.cos(a) * ref + np.sin(a) * np.cross(up, ref)
    right = np.cross(forward, up)
    assert np.allclose(np.cross(up, right), forward)
    return right, forward, up


def place(axes, root) -> dict:
    """Every named joint at root + body coordinates along (right, forward, up)."""
    r, f, u = axes
    return {n: np.asarray(root, float) + a * r + b * f + c * u for n, (a, b, c) in BODY.items()}


def raw(named: dict, names: list) -> np.ndarray:
    return np.stack([named[n] for n in names])


def smpl_h36m17(named: dict) -> np.ndarray:
    """What the documented SMPL-24 subset + approximations should give for the named skeleton."""
    j = raw(named, H36M17_NAMES).copy()
    j[8], j[9] = named["neck_base"], named["head_centre"]
    j[10] = 2 * named["head_centre"] - named["neck_base"]
    return j


# -- drawing and checks ------------------------------------------------------------------------
def frame_image(width, height, uv_by_colour: dict, level: int, radius: int = 3) -> np.ndarray:
    """Grey background of brightness `level` (identifies the frame) with coloured disks."""
    img = np.full((height, width, 3), level, np.uint8)
    for colour, uv in uv_by_colour.items():
        img[disk_mask(width, height, uv, radius)] = colour
    return img


def disk_mask(width, height, uv, radius) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    return (xx + 0.5 - uv[0]) ** 2 + (yy + 0.5 - uv[1]) ** 2 <= radius * radius


def colour_centroid(img, colour, tol=70):
    d = np.abs(img.astype(int) - np.array(colour)).max(axis=2)
    ys, xs = np.nonzero(d < tol)
    assert len(xs), f"no {colour} pixels"
    return np.array([xs.mean() + 0.5, ys.mean() + 0.5])


def forward_of(j17) -> np.ndarray:
    f = np.cross(j17[8] - j17[0], j17[1] - j17[4])
    return f / np.linalg.norm(f)


def check_body(sample, expected_mm, facing, atol_mm=1e-2, dot_tol_px=1.5, wrists=True):
    """Order, units, projection and anatomical sides of one converted sample."""
    j = sample.joints3d_mm.astype(np.float64)
    np.testing.assert_allclose(j, expected_mm, atol=atol_mm)
    assert 1300 < np.ptp(j, axis=0).max() < 2000                         # a standing adult, in mm
    np.testing.assert_allclose(project(j, sample.intrinsics), sample.joints2d_px, atol=2e-3)
    # sides, geometrically: the body faces where the nose and toes point
    assert forward_of(j) @ facing > 0.95, (sample.key, forward_of(j), facing)
    assert (j[9] - j[8]) @ facing > 0                                       # the face is in front
    if wrists:  # red was drawn at the anatomical right wrist, green at the left one
        size = sample.image.shape[0]
        for colour, joint in ((RED, 16), (GREEN, 13)):
            uv = sample.joints2d_px[joint]
            if 4 < uv.min() and uv.max() < size - 4:
                c = colour_centroid(sample.image, colour)
                assert np.abs(c - uv).max() < dot_tol_px, (sample.key, colour, c, uv)


# -- a synthetic SMPL-like model for the mesh + regressor option ------------------------------
PARENTS = [-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21]
# h36m17 marker vertex -> the SMPL joint it is skinned to
MARKER_JOINT = {"pelvis": 0, "r_hip": 2, "r_knee": 5, "r_ankle": 8, "l_hip": 1, "l_knee": 4, "l_ankle": 7,
                "spine_mid": 6, "thorax": 9, "nose": 15, "head_top": 15, "l_shoulder": 16, "l_elbow": 18,
                "l_wrist": 20, "r_shoulder": 17, "r_elbow": 19, "r_wrist": 21}
SPIN_ORDER = ["pelvis", "l_hip", "l_knee", "l_ankle", "r_hip", "r_knee", "r_ankle", "spine_mid", "thorax", "nose",
              "head_top", "l_shoulder", "l_elbow", "l_wrist", "r_shoulder", "r_elbow", "r_wrist"]


def model_rest(scale):
    """Rest pose in SMPL's model frame (x = body's left, y up, z forward), metres."""
    return {n: scale * np.array([-r, u, f]) / 1000.0 for n, (r, f, u) in BODY.items()}


def write_model(path, scale):
    rest = model_rest(scale)
    verts = np.array([rest[n] for n in SMPL24_NAMES] + [rest[n] for n in H36M17_NAMES])
    v = len(verts)
    weights = np.zeros((v, 24))
    weights[np.arange(24), np.arange(24)] = 1
    for i, n in enumerate(H36M17_NAMES):
        weights[24 + i, MARKER_JOINT[n]] = 1
    jreg = np.zeros((24, v))
    jreg[np.arange(24), np.arange(24)] = 1
    np.savez(path, v_template=verts, shapedirs=np.zeros((v, 3, 10)), posedirs=np.zeros((v, 3, 207)), J_regressor=jreg,
             weights=weights, kintree_table=np.array([[2 ** 32 - 1] + PARENTS[1:], list(range(24))]))
    return v


def rot(axis, deg):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.deg2rad(deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def posed(scale, glob_deg, elbow_deg):
    """The test's own forward kinematics for pose = global turn about y + right elbow bend."""
    rest = model_rest(scale)
    g, b = rot((0, 1, 0), glob_deg), rot((1, 0, 0), elbow_deg)
    out = {n: g @ p for n, p in rest.items()}
    for n in ("r_wrist", "r_hand"):
        out[n] = out["r_elbow"] + g @ b @ (rest[n] - rest["r_elbow"])
    return out


# -- file formats ------------------------------------------------------------------------------
def write_video(path, frames, fps=50, codec=None, bframes=2, gop=4):
    """Encode RGB frames, by default H.264 in .mp4 and MPEG-4 Part 2 in .avi (`codec="libx264"`
    puts H.264 in an AVI, as MPI-INF-3DHP's videos are). High quality, with B-frames, so packets
    are stored in decode order and the reader must reorder them (AVI carries no timestamps)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    codec = codec or ("libx264" if path.suffix == ".mp4" else "mpeg4")
    with av.open(str(path), "w") as out:
        s = out.add_stream(codec, rate=fps)
        if codec == "libx264":
            s.options = {"crf": "4", "preset": "veryfast", "x264-params": f"scenecut=0:keyint={gop}:min-keyint={gop}"}
        else:
            s.bit_rate = 20_000_000
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.gop_size = gop
        s.codec_context.max_b_frames = bframes
        for img in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)


@contextlib.contextmanager
def mat73_file(path):
    """Write a MATLAB v7.3 file: HDF5 behind MATLAB's 512-byte header block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w", userblock_size=512) as f:
        yield f
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2018 HDF5 schema 1.00 ."
    header = text.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02" + b"IM"
    with open(path, "r+b") as fh:
        fh.write(header.ljust(512, b"\x00"))


def mat73_array(f, name, array, matlab_class="double"):
    """Store as MATLAB would: dimensions reversed (column-major), with its class attribute."""
    d = f.create_dataset(name, data=np.ascontiguousarray(array))
    d.attrs["MATLAB_class"] = np.bytes_(matlab_class)
    return d


def py2_pickle(obj) -> bytes:
    """Protocol-2 pickle as Python 2 writes it: str as BINSTRING (read back with
    encoding='latin1'), numpy arrays through numpy.core.multiarray._reconstruct."""
    out = bytearray(b"\x80\x02")

    def s(text: str | bytes):
        b = text.encode("latin1") if isinstance(text, str) else text
        out.extend(b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b)

    def w(o):
        if o is None:
            out.extend(b"N")
        elif isinstance(o, bool):
            out.extend(b"\x88" if o else b"\x89")
        elif isinstance(o, int):
            out.extend(b"J" + struct.pack("<i", o))
        elif isinstance(o, float):
            out.extend(b"G" + struct.pack(">d", o))
        elif isinstance(o, (str, bytes)):
            s(o)
        elif isinstance(o, tuple):
            out.extend(b"(")
            for x in o:
                w(x)
            out.extend(b"t")
        elif isinstance(o, list):
            out.extend(b"](")
            for x in o:
                w(x)
            out.extend(b"e")
        elif isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                w(k)
                w(v)
            out.extend(b"u")
        elif isinstance(o, np.ndarray):
            o = np.ascontiguousarray(o)
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\n")
            out.extend(b"(cnumpy\nndarray\n")
            w((0,))
            s("b")
            out.extend(b"tR")
            out.extend(b"(")
            w(1)
            w(tuple(int(n) for n in o.shape))
            out.extend(b"cnumpy\ndtype\n")
            w((o.dtype.str[1:], 0, 1))
            out.extend(b"R")
            w((3, "<" if o.dtype.itemsize > 1 else "|", None, None, None, -1, -1, 0))
            out.extend(b"b")
            w(False)
            s(o.astype(o.dtype.newbyteorder("<")).tobytes())
            out.extend(b"tb")
        else:
            raise TypeError(type(o))

    w(obj)
    out.extend(b".")
    blob = bytes(out)
    assert isinstance(pickle.loads(blob, encoding="latin1"), type(obj))
    return blob
