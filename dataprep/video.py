"""Video frames by presentation order, for any codec and container PyAV opens.

Frame N of a video is the N-th picture the decoder outputs when it decodes the file from the
start: decoders reorder B-frames into display order themselves. Timestamps are not used to
number frames, because AVI has none: FFmpeg's AVI demuxer invents them from the chunk order, so
with H.264 B-frames `frame.pts` arrives out of order and shifted (issue 14 measured frames 1-2
early). Counting decoder output is correct for every container.

Seeking needs to know which frame the keyframe it lands on is. The container's own index (MP4's
sample table, AVI's idx1; read without touching the video data) lists the packets in decode
order with their keyframe flags; where it is missing or incomplete one demux pass over the file
lists them instead. A keyframe shows after every frame decoded before it, and after the few
"leading" frames decoded right after it whose timestamps are earlier (MPEG-4 Part 2 B-frames that
follow their I-frame in the file), so its display index = frames before it in the file + leading
frames, counted from the packets read after the seek. In H.264-in-AVI the invented timestamps
follow decode order, which counts no leading frames: right, since only IDR pictures are flagged
as keyframes there and nothing decoded after an IDR is shown before it. Pictures the decoder
outputs ahead of the keyframe after a seek (leading frames missing their reference) are dropped.
Whenever something does not match (the seek lands after the keyframe, no keyframe comes out), the
run decodes from the start instead, which is always right.
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
LOOKAHEAD = 32        # packets read after a keyframe to count its leading frames


@dataclass(frozen=True)
class VideoIndex:
    """Keyframes of the first video stream, in decode order."""
    key_ts: tuple        # each keyframe packet's `field` timestamp (stream time base): seek there, recognise it
    key_decoded: tuple   # frames before each keyframe in decode order (its display index, less leading frames)
    packets: int         # non-empty packets (frames, for the codecs the datasets use)
    source: str          # "container index" or "demux pass"
    field: str = "dts"   # the packet timestamp that identifies packets: dts, or pts where dts is missing (MKV)

    def keyframe_before(self, frame: int) -> int | None:
        """The last keyframe decoded at or before `frame` (it may still show after `frame` when
        `frame` is one of its leading frames: _start then steps back)."""
        j = bisect_right(self.key_decoded, frame) - 1
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
    """The keyframe table, cached per file (path, size and modification time)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SampleError("video file missing", file=str(path), sample=sample) from None
    try:
        return _video_index(str(path), st.st_size, st.st_mtime_ns)
    except SampleError as e:
        raise SampleError(str(e).rsplit(" (file ", 1)[0], file=str(path), sample=sample) from None


@functools.lru_cache(maxsize=256)
def _video_index(path: str, size: int, mtime_ns: int) -> VideoIndex:
    container = open_video(Path(path), None)
    try:
        stream = container.streams.video[0]
        rows, source = _container_rows(stream), "container index"
        if rows is None:
            rows, source = _demux_rows(container, stream, path), "demux pass"
    finally:
        container.close()
    keys = [i for i, row in enumerate(rows) if row[2]]
    dts, pts = [row[0] for row in rows], [row[1] for row in rows]
    if None not in dts and all(b > a for a, b in zip(dts, dts[1:])):
        return VideoIndex(tuple(dts[i] for i in keys), tuple(keys), len(rows), source, "dts")
    if None not in pts and len(set(pts)) == len(pts):
        return VideoIndex(tuple(pts[i] for i in keys), tuple(keys), len(rows), source, "pts")
    return VideoIndex((), (), len(rows), source)      # packets cannot be recognised: never seek


def _container_rows(stream) -> list | None:
    """(dts, pts, keyframe) per frame from the demuxer's index (which has dts only), or None
    when that index does not list every frame (Matroska cues hold keyframes only; some AVIs have
    no idx1)."""
    try:
        entries = list(stream.index_entries)
    except (AttributeError, av.error.FFmpegError):
        return None
    if not stream.frames or len(entries) != stream.frames:
        return None
    # Edit-list cuts (is_discard) are decoded but never shown; empty entries carry no picture.
    return [(e.timestamp, None, bool(e.is_keyframe)) for e in entries if e.size > 0 and not e.is_discard]


def _demux_rows(container, stream, path: str) -> list:
    rows = []
    try:
        for p in container.demux(stream):
            if p.size and not p.is_discard:      # flush packets are empty
                rows.append((p.dts, p.pts, bool(p.is_keyframe)))
    except av.error.FFmpegError as e:
        raise SampleError(f"corrupt video (reading packet {len(rows)}): {e}", file=path) from None
    return rows


class _SeekFailed(Exception):
    pass


class _Run:
    """One pass of decoding from a keyframe (or the start of the file). `first` is the index of
    the first frame it yields; `frames` yields (frame index, frame)."""

    def __init__(self, path: Path, sample: str | None, index: VideoIndex, key: int | None):
        self.container = open_video(path, sample)
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"
        try:
            if key is None:
                self.first, self.frames = 0, self._count(self._decode(self.container.demux(self.stream)), 0)
            else:
                self.first, packets = self._seek(index, key)
                self.frames = self._from_keyframe(packets)
        except BaseException:
            self.container.close()
            raise

    def close(self):
        self.container.close()

    @staticmethod
    def _decode(packets):
        for packet in packets:
            yield from packet.decode()

    @staticmethod
    def _count(outputs, start):
        for n, frame in enumerate(outputs, start):
            yield n, frame

    def _seek(self, index: VideoIndex, key: int):
        """Seek to keyframe `key`; its display index and the packets from it on."""
        target = index.key_ts[key]
        self.container.seek(target, stream=self.stream, backward=True, any_frame=False)
        packets = self.container.demux(self.stream)
        for kp in packets:
            ts = getattr(kp, index.field)
            if ts is None or ts > target:
                raise _SeekFailed          # landed after the keyframe
            if ts == target and kp.size:
                break
        else:
            raise _SeekFailed
        ahead, rest = [], packets
        while len(ahead) < LOOKAHEAD:
            p = next(packets, None)
            if p is None:
                rest = ()                  # PyAV's demux generator must not be resumed once done
                break
            ahead.append(p)
            if p.is_keyframe:
                break
        leading = 0
        if kp.pts is not None:
            leading = sum(1 for p in ahead if p.size and p.pts is not None and p.pts < kp.pts)
        return index.key_decoded[key] + leading, _chain([kp] + ahead, rest)

    def _from_keyframe(self, packets):
        outputs = self._decode(packets)
        for dropped, frame in enumerate(outputs):
            if frame.key_frame:
                break
            if dropped >= LEADING_LIMIT:
                raise _SeekFailed
        else:
            raise _SeekFailed
        yield self.first, frame
        yield from self._count(outputs, self.first + 1)


def _chain(first: list, rest):
    yield from first
    yield from rest


def _start(path: Path, sample: str | None, index: VideoIndex, key: int | None, want: int) -> _Run:
    """A run that reaches `want`: from keyframe `key`, stepping back over keyframes that show
    after `want`, or from the start when seeking fails."""
    while key is not None:
        try:
            run = _Run(path, sample, index, key)
        except _SeekFailed:
            break
        if run.first <= want:
            return run
        run.close()
        key = key - 1 if key > 0 else None
    return _Run(path, sample, index, None)


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
    run, pos = None, -1          # pos: index of the last frame decoded
    try:
        for want in wanted:
            key = index.keyframe_before(want)
            far = key is not None and index.key_decoded[key] > pos + 1 and want - pos > seek_gap
            if run is None or far:
                if run is not None:
                    run.close()
                run = _start(path, sample, index, key if far else None, want)
                pos = run.first - 1
            while pos < want:
                try:
                    pos, frame = next(run.frames)
                except StopIteration:
                    if allow_short:
                        return
                    raise SampleError(f"video ends before frame {want}" + (f" (last frame {pos})" if pos >= 0 else ""),
                                      file=str(path), sample=sample) from None
                except _SeekFailed:
                    # Rare container/codec quirk: decode from the start, counting every frame.
                    run.close()
                    run, pos = _Run(path, sample, index, None), -1
            yield want, frame.to_ndarray(format="rgb24")
    except av.error.FFmpegError as e:
        raise SampleError(f"corrupt video (decoding near frame {pos + 1}): {e}", file=str(path), sample=sample) from None
    finally:
        if run is not None:
            run.close()
