"""Joint orders: the names of each skeleton's joints in stored order, the bones that draw it,
and whether it is a hand or a body (the fine-tuning recipes and depth ranges differ by kind).
docs/datasets.md lists every dataset's mapping into these orders."""
from __future__ import annotations

JOINT_ORDERS = {
    "hand21": (
        "wrist",
        "thumb_mcp", "thumb_pip", "thumb_dip", "thumb_tip",
        "index_mcp", "index_pip", "index_dip", "index_tip",
        "middle_mcp", "middle_pip", "middle_dip", "middle_tip",
        "ring_mcp", "ring_pip", "ring_dip", "ring_tip",
        "little_mcp", "little_pip", "little_dip", "little_tip",
    ),
    "h36m17": (
        "pelvis", "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "spine",
        "thorax", "neck_nose", "head", "l_shoulder", "l_elbow", "l_wrist", "r_shoulder",
        "r_elbow", "r_wrist",
    ),
    # Background-only sets (ImageNet) carry no joints.
    "none": (),
}

# (parent, child) index pairs, for drawing skeletons and measuring bone lengths.
BONES = {
    "hand21": [(0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11),
               (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20)],
    "h36m17": [(0, 1), (1, 2), (2, 3), (0, 4), (4, 5), (5, 6), (0, 7), (7, 8), (8, 9), (9, 10), (8, 11),
               (11, 12), (12, 13), (8, 14), (14, 15), (15, 16)],
}

POSE_KINDS = {"hand21": "hand", "h36m17": "body"}


def pose_kind(joint_order: str) -> str:
    """'hand' or 'body' for a pose joint order; ValueError for anything else ('none', unknown)."""
    if joint_order not in POSE_KINDS:
        raise ValueError(f"joint order {joint_order!r} is not a pose dataset (hand21 or h36m17)")
    return POSE_KINDS[joint_order]
