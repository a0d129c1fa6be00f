"""What every DALI input pipeline shares: the shard readers, the random crop->input affine, the
colour jitter folded into normalisation, and `Loader`, which drives the pipelines and hands out
batches of torch tensors with a checkpointable position.

Conventions. Pixel coordinates are continuous, (0, 0) the top-left corner of the first pixel
(pixel centres at +0.5), the convention of DALI's warp_affine/coord_transform and of
dataprep's crops. Images leave the pipelines normalised with the ImageNet mean/std, CHW float32.

CPU vs GPU: one graph. On a CUDA machine (shards.device.cuda_available) images are decoded with
`mixed` and every pixel op runs on the GPU; otherwise the graph runs on the CPU (device_id=None)
with two substitutions that make it about 2x faster there: OpenCV's warp (`warp`) and a uint8
blend (pretrain.opencv_composite) called from the graph, unless POSEMAE_CPU_IMAGE_OPS=dali.
Random numbers, affine matrices and joints are small CPU tensors either way, and every random
operator has its own explicit seed (`op_seed`), so the substitutions draw the same augmentation.
"""
from __future__ import annotations

import base64
import functools
import json
import os
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from nvidia.dali import fn, types
from nvidia.dali.backend import TensorGPU
from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

from ..device import cpu_image_ops, cuda_available, dali_device_id
from ..reader import index_path, list_shards
from ..schema import JOINT_ORDERS, SampleError, decode_members
from ..writer import index_lines

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LOADER_STATE_FORMAT = "posemae.loader/1"


# -- augmentation settings --------------------------------------------------------------------
@dataclass(frozen=True)
class Augment:
    """The paper's augmentation: random rotation, translation and resize, then colour jitter.
    Magnitudes are our choice (the paper gives none)."""
    rotation_deg: float = 30.0           # angle ~ U(-r, r)
    scale: tuple = (0.8, 1.25)           # zoom ~ U(lo, hi) around the crop centre
    translate: float = 0.1               # shift ~ U(-t, t) x input size, each axis
    brightness: float = 0.4              # gain ~ U(1-b, 1+b)
    contrast: float = 0.4                # (x - 128) * c + 128, c ~ U(1-c, 1+c)
    colour_gain: float = 0.1             # per-channel gain ~ U(1-g, 1+g): a random colour cast


def as_augment(augment) -> Augment | None:
    """True -> the default Augment, False/None -> no augmentation, an Augment -> itself."""
    if augment is True:
        return Augment()
    if augment is False or augment is None:
        return None
    if isinstance(augment, Augment):
        return augment
    raise TypeError(f"augment must be a bool or an Augment, got {type(augment).__name__}")


# -- shards on disk ---------------------------------------------------------------------------
@dataclass
class ShardSet:
    """A set of shards as DALI's webdataset reader wants them.

    `leave_out` drops samples from the reader's view: it points `index_paths` at copies of the
    .idx files without their lines (DALI reads only what the index lists). Mutable on purpose:
    the streams' pipeline builders hold this object, and rebuild over the filtered index."""
    paths: tuple[str, ...]
    index_paths: tuple[str, ...]
    left_out: tuple[tuple[str, str], ...] = ()      # (shard, sample key), in the order left out

    @classmethod
    def at(cls, path) -> "ShardSet":
        shards = list_shards(path)
        for s in shards:
            if not index_path(s).exists():
                raise SampleError("DALI index (.idx) missing: rerun the conversion to rewrite it", file=str(s))
        return cls(tuple(str(s) for s in shards), tuple(str(index_path(s)) for s in shards))

    def count(self, require_ext: str | None = None) -> int:
        """Samples in the set (from the index headers), or those having member `require_ext`."""
        total = 0
        for idx in self.index_paths:
            with open(idx) as f:
                header = f.readline().split()
                if require_ext is None:
                    total += int(header[1])
                else:
                    total += sum(1 for line in f if require_ext in line.split()[0::4])
        return total

    def first_meta(self) -> dict:
        """The json meta of the first sample (joint order and root index are per dataset)."""
        with tarfile.open(self.paths[0]) as tf:
            for m in tf:
                if m.isfile() and m.name.split(".", 1)[-1] == "json":
                    return _json_meta(tf.extractfile(m).read(), self.paths[0], m.name.split(".", 1)[0])
        raise SampleError("no json member in the first shard", file=self.paths[0])

    def num_joints(self) -> tuple[int, int]:
        """(K, root index) from the first sample's meta."""
        meta = self.first_meta()
        order = meta.get("joint_order")
        if order not in JOINT_ORDERS or not JOINT_ORDERS[order]:
            raise SampleError(f"joint order {order!r} has no joints: not a pose dataset", file=self.paths[0])
        return len(JOINT_ORDERS[order]), int(meta.get("root_index") or 0)

    def locate_bad_sample(self) -> None:
        """Raise SampleError naming the first stale index or unreadable sample, if any. Called
        after DALI fails: its errors name the operator, not the file and sample."""
        bad = self.bad_samples()
        if bad:
            raise bad[0]

    def bad_samples(self) -> list[SampleError]:
        """Every sample the reader lists but cannot use, each a SampleError naming its shard and
        key: members past the end of a truncated tar, members that do not decode. A whole-shard
        problem (an index that does not match its tar) is raised at once. Reads every listed
        sample, so it is slow: called only after DALI fails."""
        bad = []
        for tar, idx in zip(self.paths, self.index_paths):
            size = Path(tar).stat().st_size
            samples = _index_samples(idx)
            truncated = {key for key, members in samples if any(o + n > size for _, o, n, _ in members)}
            if not truncated and not self.left_out:   # a filtered index cannot match the tar's listing
                _check_index_matches(tar, idx)
            with open(tar, "rb") as f:
                for key, members in samples:
                    if key in truncated:
                        bad.append(SampleError(f"truncated shard ({size} bytes): the sample's members end past it",
                                               file=tar, sample=key))
                        continue
                    data = {}
                    for ext, offset, length, _ in members:
                        f.seek(offset)
                        data[ext] = f.read(length)
                    try:
                        decode_members(key, data)
                    except SampleError as e:
                        bad.append(SampleError(e.reason, file=tar, sample=key))
        return bad

    def leave_out(self, samples: list[tuple[str, str]]) -> None:
        """From now on the reader skips these (shard, key) samples: each affected shard's index is
        rewritten without them into a private temporary directory."""
        self.left_out = self.left_out + tuple((str(f), str(k)) for f, k in samples if (str(f), str(k)) not in self.left_out)
        dropped: dict[str, set] = {}
        for f, k in self.left_out:
            dropped.setdefault(f, set()).add(k)
        index_paths = []
        for tar, idx in zip(self.paths, self.index_paths):
            original = str(index_path(Path(tar)))
            if tar not in dropped:
                index_paths.append(original)
                continue
            kept = [line for line in Path(original).read_text().splitlines()[1:]
                    if line.split()[3].split(".", 1)[0] not in dropped[tar]]
            filtered = Path(_left_out_dir()) / f"{len(os.listdir(_left_out_dir())):06d}-{Path(original).name}"
            filtered.write_text("\n".join([f"v1.2 {len(kept)}", *kept]) + "\n")
            index_paths.append(str(filtered))
        self.index_paths = tuple(index_paths)


def _index_samples(idx) -> list[tuple[str, list[tuple[str, int, int, str]]]]:
    """A DALI v1.2 index -> [(key, [(ext, offset, size, member name), ...]), ...]."""
    samples = []
    for line in Path(idx).read_text().splitlines()[1:]:
        fields = line.split()
        members = [(fields[i], int(fields[i + 1]), int(fields[i + 2]), fields[i + 3]) for i in range(0, len(fields), 4)]
        samples.append((members[0][3].split(".", 1)[0], members))
    return samples


def _check_index_matches(tar: str, idx: str) -> None:
    try:
        expected = index_lines(tar)
    except tarfile.TarError as e:
        raise SampleError(f"unreadable tar: {e}", file=tar) from None
    if Path(idx).read_text().splitlines() != expected:
        raise SampleError("DALI index does not match the tar (stale index: rerun the conversion)", file=idx)


@functools.lru_cache(maxsize=None)
def _left_out_dir() -> str:
    """This process's directory of filtered indexes (removed at exit; rebuilt from the loader
    state on --resume)."""
    import atexit
    import shutil
    import tempfile
    path = tempfile.mkdtemp(prefix="posemae-left-out-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _json_meta(data: bytes, file: str, key: str) -> dict:
    try:
        return json.loads(data)
    except ValueError as e:
        raise SampleError(f"unreadable json meta: {e}", file=file, sample=key) from None


def reader(shards: ShardSet, ext: list[str], *, name: str, rank: int, world_size: int, seed: int,
           shuffle: bool, dtypes: list | None = None, missing: str = "empty", pad_last_batch: bool = False):
    """fn.readers.webdataset over `shards`, this rank's part of them.

    shuffle=True: the shard-file order is reshuffled every epoch with `seed` (the same on every
    rank, so ranks keep disjoint parts) and samples are drawn from a buffer of up to 1024; the
    stored order is already shuffled by dataprep. shuffle=False: storage order, each rank sticking
    to its own part, which evaluation needs."""
    per_rank = max(1, shards.count() // world_size)
    order = dict(random_shuffle=True, initial_fill=min(1024, per_rank), shuffle_after_epoch=True,
                 shuffle_after_epoch_seed=derive_seed(seed, 0, name)) if shuffle else dict(stick_to_shard=True)
    return fn.readers.webdataset(
        paths=list(shards.paths), index_paths=list(shards.index_paths), ext=ext, dtypes=dtypes,
        missing_component_behavior=missing, name=name, shard_id=rank, num_shards=world_size,
        seed=derive_seed(seed, rank, name), pad_last_batch=pad_last_batch, **order)


def derive_seed(seed: int, rank: int, salt: str) -> int:
    """A stable 31-bit seed per (seed, rank, purpose); Python's hash() is salted per process."""
    return (seed * 1_000_003 + rank * 7919 + zlib.crc32(salt.encode())) % (2**31 - 1)


def op_seed(pipeline_seed: int, purpose: str) -> int:
    """An explicit seed for one random operator. DALI otherwise deals seeds out in the order
    operators join the graph, so adding or swapping any operator upstream (e.g. OpenCV's warp
    for DALI's) would silently change every random draw after it."""
    return derive_seed(pipeline_seed, 0, purpose)


# -- graph pieces -----------------------------------------------------------------------------
def decode_image(jpg, gpu: bool):
    return fn.decoders.image(jpg, device="mixed" if gpu else "cpu", output_type=types.RGB)


def image_size(jpg):
    """(height, width) of each encoded image as floats, read from the header (CPU, no decode)."""
    return fn.cast(fn.peek_image_shape(jpg, dtype=types.INT32)[0:2], dtype=types.FLOAT)


def mask_or_zeros(png, hw):
    """Decode mask.png (1 channel, HWC uint8); a sample without one gets zeros of the image size.
    Always decoded on the CPU: PNG has no GPU decoder, `mixed` would fall back to the CPU."""
    has_mask = png.shape()[0] > 0
    if has_mask:
        mask = fn.decoders.image(png, output_type=types.GRAY)
    else:
        mask = zero_mask(hw)
    return mask, has_mask


def zero_mask(hw):
    """An all-background HxWx1 uint8 mask."""
    shape = fn.cat(fn.cast(hw, dtype=types.INT32), fn.constant(idata=[1], shape=[1], dtype=types.INT32))
    return fn.zeros(shape=shape, dtype=types.UINT8, layout="HWC")


def values_or_zeros(raw, count: int):
    """A raw float member (`count` values), or `count` zeros where the sample lacks it."""
    present = raw.shape()[0] > 0
    if present:
        values = raw
    else:
        values = fn.constant(fdata=[0.0] * count, shape=[count], dtype=types.FLOAT)
    return values, present


def crop_to_input(hw, input_size: int, augment: Augment | None, seed: int):
    """The 2x3 affine taking stored-crop pixels to input pixels. Without augmentation it is the
    plain resize; with it: centre, zoom, rotate, shift, then re-centre on the input. `seed`: the
    pipeline's seed, from which each random operator's own is derived."""
    h, w = hw[0], hw[1]
    s = float(input_size)
    if augment is None:
        return fn.transforms.scale(scale=fn.stack(s / w, s / h))
    zoom = fn.random.uniform(range=list(augment.scale), seed=op_seed(seed, "zoom"))
    angle = fn.random.uniform(range=[-augment.rotation_deg, augment.rotation_deg], seed=op_seed(seed, "angle"))
    shift = fn.random.uniform(range=[-augment.translate * s, augment.translate * s], shape=[2],
                              seed=op_seed(seed, "shift"))
    mt = fn.transforms.translation(offset=fn.stack(-0.5 * w, -0.5 * h))
    mt = fn.transforms.scale(mt, scale=fn.stack(zoom * s / w, zoom * s / h))
    mt = fn.transforms.rotation(mt, angle=angle)
    return fn.transforms.translation(mt, offset=shift + 0.5 * s)


def warp(image, matrix, input_size: int, gpu: bool):
    """One bilinear resampling pass (all channels at once) to input_size x input_size, zeros
    outside the stored crop. `matrix` maps stored-crop pixels to input pixels.

    GPU: DALI's warp_affine. CPU: OpenCV's warpAffine called from the graph (python_function on
    the whole batch; OpenCV releases the GIL) unless POSEMAE_CPU_IMAGE_OPS=dali: DALI's CPU warp
    is a scalar per-pixel loop, about 1.8 ms for a 256 px RGBA output on this machine's cores
    against 0.12-0.2 ms for OpenCV's fixed-point SIMD one, and it was three quarters of the
    pipeline's time. OpenCV quantises sample positions to 1/32 pixel and weights to 15 bits, well
    below what a training input can show (a test pins the two within 3 grey levels)."""
    if uses_dali_image_ops(gpu):
        # inverse_map=False: `matrix` maps source to destination (pinned by the joint/dot test)
        return fn.warp_affine(image, matrix=matrix, size=[input_size, input_size], inverse_map=False,
                              fill_value=0, interp_type=types.INTERP_LINEAR)
    return fn.python_function(image, matrix, function=functools.partial(opencv_warp, size=input_size),
                              batch_processing=True)


def uses_dali_image_ops(gpu: bool) -> bool:
    """DALI's own resampling/blending operators: always on a GPU, on the CPU when asked."""
    return gpu or cpu_image_ops() == "dali"


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


def colour_normalisation(augment: Augment | None, seed: int):
    """Per-channel (mean, std) for crop_mirror_normalize that apply the colour jitter and the
    ImageNet normalisation in the same pass.

    The jitter is affine per channel, y = a*x + b (brightness gain, contrast about 128, a random
    per-channel gain), so ((a*x + b)/255 - mu)/sigma = (x - (255*mu - b)/a) / (255*sigma/a). Being
    affine, it also commutes with background compositing (a convex combination): jittering the
    foreground and the background alike and then compositing equals compositing then jittering."""
    mean255 = [255.0 * m for m in IMAGENET_MEAN]
    std255 = [255.0 * s for s in IMAGENET_STD]
    if augment is None:
        return mean255, std255
    brightness = fn.random.uniform(range=[1 - augment.brightness, 1 + augment.brightness],
                                   seed=op_seed(seed, "brightness"))
    contrast = fn.random.uniform(range=[1 - augment.contrast, 1 + augment.contrast], seed=op_seed(seed, "contrast"))
    gain = fn.random.uniform(range=[1 - augment.colour_gain, 1 + augment.colour_gain], shape=[3],
                             seed=op_seed(seed, "colour_gain"))
    a = gain * (brightness * contrast)
    b = gain * (brightness * 128.0 * (1.0 - contrast))
    mean = (fn.constant(fdata=mean255, shape=[3]) - b) / a
    std = fn.constant(fdata=std255, shape=[3]) / a
    return mean, std


def with_mask_channel(mean, std):
    """Extend (mean, std) by a 4th channel that maps a 0..255 mask to 0..1."""
    if isinstance(mean, list):
        return mean + [0.0], std + [255.0]
    return (fn.cat(mean, fn.constant(fdata=[0.0], shape=[1])),
            fn.cat(std, fn.constant(fdata=[255.0], shape=[1])))


def normalise(image, mean, std):
    """HWC uint8 -> CHW float32, (x - mean) / std per channel."""
    return fn.crop_mirror_normalize(image, dtype=types.FLOAT, output_layout="CHW", mean=mean, std=std)


def sample_key(jpg):
    """The reader's source info, '<tar>:<offset>:<key>.jpg', as uint8 bytes (parsed in Python)."""
    return fn.get_property(jpg, key="source_info")


# -- the loader -------------------------------------------------------------------------------
@dataclass
class Stream:
    """One DALI pipeline contributing `batch_size` samples to every batch.

    `build(checkpoint)` makes the pipeline (restored from a DALI checkpoint when given);
    `names` name its outputs in order ('key' is the source info, turned into strings);
    `constants` are per-stream outputs added in Python (e.g. is_target)."""
    build: Callable[[bytes | None], object]
    batch_size: int
    names: tuple[str, ...]
    shards: list[ShardSet]
    constants: dict | None = None


class Loader:
    """Iterable over batches, dicts of torch tensors (on the GPU when DALI runs there) and
    `key`, a list of sample keys. `len(loader)` batches make an epoch on this rank; iterating
    yields what is left of the current epoch, then `epoch` advances. The readers stream on
    without a break between epochs (training) unless the pipelines pad epochs (evaluation).

    `state_dict()` is JSON-able (DALI checkpoints as base64) for DeepSpeed's client_state; a
    Loader built with the same arguments and given it with `load_state_dict` continues with the
    very batches the saved one would have produced next, mid-epoch included.

    A sample DALI cannot read (a corrupted JPEG, a truncated tar) raises one SampleError naming
    the shard and the sample key. With `skip_bad_samples` set (the trainers' --skip-bad-samples)
    the loader instead leaves every bad sample of that stream's shards out (ShardSet.leave_out),
    rebuilds the streams reading them and goes on; `drain_skipped()` hands the skips to the
    trainer to count and log. DALI cannot drop a sample from a running reader, so a rebuilt
    stream starts its reader's order afresh over the remaining samples (the epoch and step
    counts go on); the left-out samples are part of the state, so a resume reads what the
    interrupted run would have."""

    def __init__(self, streams: list[Stream], batches_per_epoch: int, *, fingerprint: dict,
                 valid_per_epoch: int | None = None):
        if batches_per_epoch < 1:
            raise ValueError("fewer samples on this rank than one batch: lower the batch size or the world size")
        self.streams = streams
        self.batches_per_epoch = batches_per_epoch
        self.fingerprint = fingerprint
        self.valid_per_epoch = valid_per_epoch      # evaluation: samples past it are padding
        self.epoch = 0
        self.step = 0                               # batches already handed out in this epoch
        self._pipes = None
        self._checkpoints = None
        self.skip_bad_samples = False
        self._skipped: list[dict] = []              # left out since the last drain_skipped()

    def __len__(self) -> int:
        return self.batches_per_epoch

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        if self._pipes is not None:
            checkpoints = [p.checkpoint() for p in self._pipes]
        else:
            checkpoints = self._checkpoints
        return {
            "format": LOADER_STATE_FORMAT, "epoch": self.epoch, "step": self.step,
            "fingerprint": self.fingerprint,
            "pipelines": None if checkpoints is None else [base64.b64encode(c).decode("ascii") for c in checkpoints],
            "left_out": [[list(x) for x in shards.left_out] for shards in self._shard_sets()],
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != LOADER_STATE_FORMAT:
            raise ValueError(f"not a loader state (format {state.get('format')!r})")
        if state["fingerprint"] != self.fingerprint:
            raise ValueError(f"loader state was saved with {state['fingerprint']}, this loader is {self.fingerprint}")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self._checkpoints = None if state["pipelines"] is None else [base64.b64decode(c) for c in state["pipelines"]]
        # the DALI checkpoints were taken over the filtered indexes: filter the same way first
        for shards, left_out in zip(self._shard_sets(), state.get("left_out") or []):
            if left_out:
                shards.leave_out([tuple(x) for x in left_out])
        self._pipes = None   # rebuilt from the checkpoints on the next iteration

    def _shard_sets(self) -> list[ShardSet]:
        """Every distinct ShardSet the streams read (backgrounds may be shared), in order."""
        seen = []
        for stream in self.streams:
            for shards in stream.shards:
                if not any(shards is s for s in seen):
                    seen.append(shards)
        return seen

    def drain_skipped(self) -> list[dict]:
        """Samples left out since the last call: {"file", "sample", "error", "epoch", "step"}."""
        skipped, self._skipped = self._skipped, []
        return skipped

    # -- iteration -----------------------------------------------------------------------
    def _build(self):
        checkpoints = self._checkpoints or [None] * len(self.streams)
        self._pipes = [s.build(c) for s, c in zip(self.streams, checkpoints)]
        for p in self._pipes:
            p.build()

    def __iter__(self):
        if self._pipes is None:
            self._build()
        while self.step < self.batches_per_epoch:
            batch = self._next_batch()
            self.step += 1
            yield batch
        self.epoch += 1
        self.step = 0

    def _run(self, i: int):
        try:
            return self._pipes[i].run()
        except RuntimeError:
            # DALI names the operator, not the sample: re-read this stream's shards in Python
            # (slow, but only on failure) to name the file and sample. Nothing found (not a data
            # error, e.g. out of memory): DALI's own error goes up.
            bad = [e for shards in self.streams[i].shards for e in shards.bad_samples()]
            if not bad:
                raise
            if not self.skip_bad_samples:
                first = bad[0]
                raise SampleError(f"{first.reason} [{len(bad)} bad sample(s) in these shards; --skip-bad-samples "
                                  "leaves them out and goes on]", file=first.file, sample=first.sample) from None
        self._leave_out(bad)
        return self._pipes[i].run()

    def _leave_out(self, bad: list[SampleError]) -> None:
        """Leave `bad` out of their shard sets and rebuild every stream reading one of them."""
        changed = []
        for shards in self._shard_sets():
            mine = [(e.file, e.sample) for e in bad if e.file in shards.paths]
            if mine:
                shards.leave_out(mine)
                changed.append(shards)
        self._skipped += [{"file": e.file, "sample": e.sample, "error": e.reason, "epoch": self.epoch,
                           "step": self.step} for e in bad]
        for j, stream in enumerate(self.streams):
            if any(shards is c for shards in stream.shards for c in changed):
                self._pipes[j] = None                  # frees the old pipeline's threads first
                self._pipes[j] = stream.build(None)
                self._pipes[j].build()

    def _next_batch(self) -> dict:
        outputs = [self._run(i) for i in range(len(self.streams))]
        total = sum(s.batch_size for s in self.streams)
        batch = {}
        for name in self.streams[0].names:
            lists = [out[s.names.index(name)] for s, out in zip(self.streams, outputs)]
            batch[name] = keys_of(lists) if name == "key" else stack_batches(lists, total)
        for name in (self.streams[0].constants or {}):
            batch[name] = torch.cat([torch.full((s.batch_size,), s.constants[name]) for s in self.streams])
            batch[name] = batch[name].to(device_of(batch))
        if self.valid_per_epoch is not None:
            position = self.step * total + torch.arange(total)
            batch["valid"] = (position < self.valid_per_epoch).to(device_of(batch))
        return batch


def device_of(batch: dict) -> torch.device:
    for v in batch.values():
        if isinstance(v, torch.Tensor):
            return v.device
    return torch.device("cpu")


def stack_batches(lists, total: int) -> torch.Tensor:
    """DALI TensorLists (one per stream) -> one torch tensor, copied straight into place."""
    dense = [tl.as_tensor() for tl in lists]
    first = dense[0]
    dtype = to_torch_type[first.dtype]
    gpu = isinstance(first, TensorGPU)
    device = torch.device("cuda", first.device_id()) if gpu else torch.device("cpu")
    out = torch.empty([total, *first.shape()[1:]], dtype=dtype, device=device)
    stream = torch.cuda.current_stream(device) if gpu else None
    offset = 0
    for t in dense:
        n = t.shape()[0]
        feed_ndarray(t, out[offset:offset + n], cuda_stream=stream)
        offset += n
    return out


def keys_of(lists) -> list[str]:
    """source_info '<tar>:<offset>:<member>' -> the member's sample key."""
    keys = []
    for tl in lists:
        for i in range(len(tl)):
            info = bytes(np.asarray(tl.at(i))).decode()
            keys.append(info.rsplit(":", 1)[-1].split(".", 1)[0])
    return keys


def pipeline_kwargs(*, batch_size: int, num_threads: int, seed: int, rank: int, salt: str,
                    checkpoint: bytes | None) -> dict:
    """Arguments every pipeline gets: CPU mode (device_id None) unless CUDA is present."""
    device_id = dali_device_id(torch.cuda.current_device()) if cuda_available() else None
    kw = dict(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
              seed=derive_seed(seed, rank, salt), prefetch_queue_depth=2)
    if checkpoint is not None:
        kw["checkpoint"] = checkpoint
    return kw


def per_rank_min(total: int, world_size: int) -> int:
    """Samples of the smallest rank's part: DALI splits [N*r/n, N*(r+1)/n)."""
    return total // world_size


def rank_share(total: int, rank: int, world_size: int) -> int:
    return total * (rank + 1) // world_size - total * rank // world_size


def gpu_outputs(gpu: bool, *nodes):
    """Every tensor output on the GPU when the pipeline runs there (keys stay CPU strings)."""
    return tuple(n.gpu() if gpu else n for n in nodes)
