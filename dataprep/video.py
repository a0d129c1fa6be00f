"""Video frames by presentation order, for any codec and container PyAV opens.

Frame N of a video is the N-th picture the decoder outputs when it decodes the file from the
start: decoders reorder B-frames into display order themselves. Timestamps are not used to
number frames, because AVI has none: FFmpeg's AVI demuxer invents them from the chunk order, so
with H.264 B-frames `frame.pts` arrives out of order and shifted (issue 14 measured frames 1-2
early). Counting decoder output is correct for every container.

Seeking needs the presentation index of the keyframe it lands on. One demux pass (no decoding,
cached per file) lists the packets. A keyframe's presentation index is the rank of its pts among
all packets' pts: exact for MP4/MKV and for MPEG-4 Part 2 in AVI (the parser recovers real pts,
and those streams have B-frames that follow the I-frame in decode order but show before it). For
H.264 in AVI the invented pts follow decode order, which is exact for its keyframes because only
IDR pictures are flagged as keyframes and nothing after an IDR is shown before it. After a seek,
pictures the decoder outputs ahead of the keyframe (leading B-frames missing their reference)
are dropped; if anything does not match (seek landed after the keyframe, no keyframe comes out),
the run decodes from the start instead, which is always right.
"""
from __future__ import annotations

import functools
import os
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from shards.schema import SampleError

SEEK_GAP = 200        # frames: decode straight through shorter gaps, seek across longer ones
LEADING_LIMIT = 64    # outputs tolerated after a seek before the keyframe must have come out


@dataclass(frozen=True)
class VideoIndex:
    """Keyframes of the first video stream: where to seek and which frame each one is."""
    key_seek: tuple      # timestamp to seek to (pts, else dts), stream time base
    key_dts: tuple       # dts of the keyframe packet, to recognise it after the seek
    key_frame: tuple     # presentation index of each keyframe, increasing
    packets: int         # non-empty packets (frames, for the codecs the datasets use)

    def keyframe_before(self, frame: int) -> int | None:
        """Position in the keyframe lists of the last keyframe shown at or before `frame`."""
        j = bisect_right(self.key_frame, frame) - 1
        return j if j >= 0 else None


def open_video(path: Path, sample: str | None):
    try:
        container = av.open(str(path))
    except FileNotFoundError:
        raise SampleError("video file missing", file=str(path), sample=sample) from None
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise SampleError(f"corrupt or unreadable video: {e}", file=str(path), sample=sample) from None
    if not container.streams.video:
        container.close()
        raise SampleError("file has no video stream", file=str(path), sample=sample)
    return container


def video_index(path: Path, sample: str | None = None) -> VideoIndex:
    """The demux pass, cached per file (path, size and modification time)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SampleError("video file missing", file=str(path), sample=sample) from None
    try:
        return _video_index(str(path), st.st_size, st.st_mtime_ns)
    except SampleError as e:
        raise SampleError(str(e).rsplit(" (file ", 1)[0], file=str(path), sample=sample) from None


@functools.lru_cache(maxsize=64)
def _video_index(path: str, size: int, mtime_ns: int) -> VideoIndex:
    container = open_video(Path(path), None)
    rows = []   # (dts, pts, keyframe) in decode order
    try:
        stream = container.streams.video[0]
        for p in container.demux(stream):
            # Flush packets are empty; edit-list cuts (is_discard) are decoded but never shown.
            if p.size and not p.is_discard:
                rows.append((p.dts, p.pts, bool(p.is_keyframe)))
    except av.error.FFmpegError as e:
        raise SampleError(f"corrupt video (reading packet {len(rows)}): {e}", file=path) from None
    finally:
        container.close()
    if any(dts is None for dts, _, _ in rows):
        return VideoIndex((), (), (), len(rows))        # no way to recognise packets: never seek
    if all(pts is not None for _, pts, _ in rows):
        order = np.argsort([pts for _, pts, _ in rows], kind="stable")
        shown = np.empty(len(rows), np.int64)
        shown[order] = np.arange(len(rows))
    else:
        shown = np.arange(len(rows))
    keys = [i for i, (_, _, k) in enumerate(rows) if k]
    key_frame = [int(shown[i]) for i in keys]
    if any(b <= a for a, b in zip(key_frame, key_frame[1:])):
        return VideoIndex((), (), (), len(rows))        # keyframes not in display order: never seek
    key_seek = tuple(rows[i][1] if rows[i][1] is not None else rows[i][0] for i in keys)
    return VideoIndex(key_seek, tuple(rows[i][0] for i in keys), tuple(key_frame), len(rows))


class _Run:
    """One pass of decoding from a keyframe (or the start): yields (frame index, frame)."""

    def __init__(self, path: Path, sample: str | None, index: VideoIndex, key: int | None):
        self.path, self.sample = path, sample
        self.container = open_video(path, sample)
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.frames = self._from_start() if key is None else self._from_key(index, key)
        self.last = -1        # index of the last frame yielded

    def close(self):
        self.container.close()

    def _decode(self, packets):
        for packet in packets:
            yield from packet.decode()

    def _from_start(self):
        for n, frame in enumerate(self._decode(self.container.demux(self.stream))):
            yield n, frame

    def _from_key(self, index: VideoIndex, key: int):
        self.container.seek(index.key_seek[key], stream=self.stream, backward=True, any_frame=False)
        packets = self.container.demux(self.stream)
        target = index.key_dts[key]
        for p in packets:
            if p.dts is None or p.dts > target:
                raise _SeekFailed
            if p.dts == target:
                break
        else:
            raise _SeekFailed
        outputs = self._decode(_chain(p, packets))
        for dropped, frame in enumerate(outputs):
            if frame.key_frame:
                break
            if dropped >= LEADING_LIMIT:
                raise _SeekFailed
        else:
            raise _SeekFailed
        n = index.key_frame[key]
        yield n, frame
        for n, frame in enumerate(outputs, n + 1):
            yield n, frame


class _SeekFailed(Exception):
    pass


def _chain(first, rest):
    yield first
    yield from rest


def video_frames(path: Path, indices, sample: str | None = None, allow_short: bool = False,
                 seek_gap: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (frame index, HxWx3 uint8 RGB) for the wanted 0-based frame indices in increasing
    order, frame N being the N-th frame in presentation order. Gaps longer than `seek_gap`
    frames (default SEEK_GAP) are crossed by seeking to the keyframe before the next wanted
    frame. A video that ends early is an error unless `allow_short` (then the remaining indices
    are dropped)."""
    path = Path(path)
    seek_gap = SEEK_GAP if seek_gap is None else seek_gap
    wanted = sorted(set(int(i) for i in indices))
    if not wanted:
        return
    if wanted[0] < 0:
        raise SampleError(f"negative frame index {wanted[0]}", file=str(path), sample=sample)
    index = video_index(path, sample)
    run, frames, pos = None, None, -1
    try:
        for want in wanted:
            key = index.keyframe_before(want)
            far = key is not None and index.key_frame[key] > pos + 1 and want - pos > seek_gap
            if run is None or far:
                if run is not None:
                    run.close()
                run, frames, pos = _start(path, sample, index, key if far else None)
            while pos < want:
                try:
                    pos, frame = next(frames)
                except StopIteration:
                    if allow_short:
                        return
                    raise SampleError(f"video ends before frame {want}" + (f" (last frame {pos})" if pos >= 0 else ""),
                                      file=str(path), sample=sample) from None
                except _SeekFailed:
                    # Rare container/codec quirk: decode from the start, counting every frame.
                    run.close()
                    run, frames, pos = _start(path, sample, index, None)
                    continue
            yield want, frame.to_ndarray(format="rgb24")
    except av.error.FFmpegError as e:
        raise SampleError(f"corrupt video (decoding near frame {pos + 1}): {e}", file=str(path), sample=sample) from None
    finally:
        if run is not None:
            run.close()


def _start(path, sample, index, key):
    run = _Run(path, sample, index, key)
    start = -1 if key is None else index.key_frame[key] - 1
    return run, run.frames, start
