"""Real photographs for backgrounds: scikit-image's bundled files, read from its data folder
(never fetched)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


# Bundled scikit-image photographs (files in skimage/data shipped with the wheel, read directly so
# nothing can be fetched). Greyscale ones are kept: ImageNet has greyscale files too.
PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "hubble_deep_field.jpg", "ihc.png",
          "retina.jpg", "motorcycle_left.png", "motorcycle_right.png", "color.png", "camera.png", "coins.png",
          "moon.png", "page.png", "grass.png", "gravel.png", "brick.png", "clock_motion.png", "cell.png", "text.png")


def bundled_photos() -> list[tuple[str, Image.Image]]:
    """scikit-image's bundled photographs, read from its data folder (no fetching)."""
    try:
        import skimage.data
    except ImportError:
        raise FileNotFoundError("the demo needs scikit-image's bundled photographs: pip install -e '.[demo]'") from None
    folder = Path(skimage.data.__file__).parent
    photos = []
    for name in PHOTOS:
        path = folder / name
        if path.exists():
            with Image.open(path) as im:
                photos.append((name, im.convert("L" if im.mode in ("L", "I;16", "1") else "RGB")))
    if len(photos) < 4:
        raise FileNotFoundError(f"only {len(photos)} of scikit-image's sample photographs found in {folder}")
    return photos


def photo_crops(n: int, size: int, seed: int) -> list[np.ndarray]:
    """Random square crops of scikit-image's sample photographs, resized to `size`: realistic
    JPEG sizes and decode cost for benchmarks."""
    import skimage.data as data
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry(),
              data.hubble_deep_field(), *data.stereo_motorcycle()[:2]]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        p = photos[rng.integers(len(photos))]
        side = int(rng.integers(min(p.shape[:2]) // 2, min(p.shape[:2])))
        y, x = rng.integers(0, p.shape[0] - side + 1), rng.integers(0, p.shape[1] - side + 1)
        out.append(np.asarray(Image.fromarray(p[y:y + side, x:x + side]).resize((size, size), Image.BILINEAR)))
    return out
