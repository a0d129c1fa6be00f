"""The CPU graph's OpenCV substitutes for DALI's warp and blend, called from the graph with
fn.python_function on whole batches (OpenCV releases the GIL). POSEMAE_CPU_IMAGE_OPS=dali turns
them off (shards.device)."""
from __future__ import annotations

import numpy as np


def opencv_warp(images, matrices, *, size: int):
    """Batch warp for the CPU graph. DALI's matrices use pixel corners as the origin (centres at
    +0.5), OpenCV's pixel centres: with p = q + 0.5 on both sides, q_dst = A q_src + A(0.5, 0.5)
    + t - 0.5. BORDER_CONSTANT 0 reads zeros for taps outside the crop, as DALI's fill_value=0."""
    import cv2
    out = []
    for image, matrix in zip(images, matrices):
        m = np.asarray(matrix, dtype=np.float64).reshape(2, 3).copy()
        m[:, 2] += m[:, :2].sum(axis=1) * 0.5 - 0.5
        warped = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                borderValue=0)
        out.append(warped.reshape(size, size, image.shape[2]))     # OpenCV drops a 1-channel axis
    return out


def opencv_composite(images, backgrounds, swaps):
    """CPU blend of warped RGBA uint8 images with their background windows where `swap`:
    round((m*x + (255-m)*u) / 255) per channel, the mask channel kept. Pixels with m = 255 are
    copied whole and only those with 0 < m < 255 (a hard mask's warped edge, a few percent) are
    computed, which makes it about 6x faster than blending every pixel; a fully soft mask is
    still exact, only slower."""
    import cv2
    out = []
    for rgba, background, swap in zip(images, backgrounds, swaps):
        if not bool(swap):
            out.append(rgba)
            continue
        # Whole-image work stays in OpenCV on 4 interleaved channels: numpy's channel slicing
        # and stacking cost more than the blend itself.
        rgba = np.ascontiguousarray(rgba)
        m = cv2.extractChannel(rgba, 3)
        blended = cv2.cvtColor(np.ascontiguousarray(background), cv2.COLOR_RGB2RGBA)
        cv2.mixChannels([m], [blended], [0, 3])                          # (u, m)
        cv2.copyTo(rgba, cv2.compare(m, 255, cv2.CMP_EQ), blended)       # (x, m) where m = 255
        soft = np.flatnonzero(cv2.inRange(m, 1, 254))
        if soft.size:                          # the mask channel comes out as m: (m*m + m*(255-m))/255
            w = m.reshape(-1)[soft, None].astype(np.uint32)
            x = rgba.reshape(-1, 4)[soft].astype(np.uint32)
            u = blended.reshape(-1, 4)[soft].astype(np.uint32)
            blended.reshape(-1, 4)[soft] = (x * w + u * (255 - w) + 127) // 255
        out.append(blended)
    return out
