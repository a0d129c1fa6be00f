"""Seeds of the input pipelines: stable across processes (Python's hash() is salted), one per
(seed, rank, purpose) and one per random operator."""
from __future__ import annotations

import zlib


def derive_seed(seed: int, rank: int, salt: str) -> int:
    """A stable 31-bit seed per (seed, rank, purpose); Python's hash() is salted per process."""
    return (seed * 1_000_003 + rank * 7919 + zlib.crc32(salt.encode())) % (2**31 - 1)


def op_seed(pipeline_seed: int, purpose: str) -> int:
    """An explicit seed for one random operator. DALI otherwise deals seeds out in the order
    operators join the graph, so adding or swapping any operator upstream (e.g. OpenCV's warp
    for DALI's) would silently change every random draw after it."""
    return derive_seed(pipeline_seed, 0, purpose)
