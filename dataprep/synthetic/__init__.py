"""Synthetic demo data: a labelled source hand set in FreiHAND's released layout, a target set in
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

Modules: hands (the hand model), raster (drawing and shading), scenes (the two domains' looks),
photos (the background photographs), layouts (the released dataset layouts written to disk).
"""
from .layouts import DemoPaths, contact_sheet, generate_demo


__all__ = ["DemoPaths", "contact_sheet", "generate_demo"]
