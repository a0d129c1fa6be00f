"""The video reader gives frame N as the N-th frame in presentation order: H.264 with B-frames in
AVI (no timestamps; FFmpeg's invented ones come out of order), H.264 in MP4 and MKV, MPEG-4 Part 2
with B-frames in AVI and MP4, each frame's content encoding its index; with and without seeking.
Then the same through the converters: 3DHP (H.264 AVI) and Human3.6M (MP4) samples show the frame
their meta names."""
import av
import numpy as np
import pytest
from click.testing import CliRunner

import dataprep.video as video
from dataprep.cli import cli
from dataprep.video import video_frames, video_index
from shards import iter_samples
from shards.schema import SampleError
from tests.body_fixtures import write_video

W, H, N, GOP = 64, 48, 50, 12
BITS = 6                                   # 8 px wide black/white bars: frame index in binary


def index_frame(i: int) -> np.ndarray:
    img = np.full((H, W, 3), 40, np.uint8)
    for b in range(BITS):
        if i >> b & 1:
            img[:, 8 * b: 8 * b + 8] = 220
    return img


def read_index(img: np.ndarray) -> int:
    return sum(1 << b for b in range(BITS) if img[8:-8, 8 * b + 2: 8 * b + 6].mean() > 130)


VIDEOS = {"h264.avi": "libx264", "h264.mp4": "libx264", "mpeg4.avi": "mpeg4", "mpeg4.mp4": "mpeg4", "h264.mkv": "libx264"}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    for name, codec in VIDEOS.items():
        write_video(d / name, [index_frame(i) for i in range(N)], fps=25, codec=codec, bframes=2, gop=GOP)
    return d


def record_starts(monkeypatch) -> list:
    """Where each decoding run began: None = the start of the file, j = the j-th keyframe."""
    starts = []
    original = video._Run

    def run(path, sample, index, key):
        starts.append(key)
        return original(path, sample, index, key)
    monkeypatch.setattr(video, "_Run", run)
    return starts


@pytest.mark.parametrize("name", sorted(VIDEOS))
def test_fixture_videos_reorder_frames(videos, name):
    """The files really have B-frames, and in the AVIs FFmpeg's timestamps do not give the order
    (the failure the reader must not depend on)."""
    with av.open(str(videos / name)) as c:
        frames = [(f.pts, read_index(f.to_ndarray(format="rgb24")), str(f.pict_type)) for f in c.decode(video=0)]
    assert [i for _, i, _ in frames] == list(range(N))             # decoder output order = presentation
    assert any(t.endswith("B") or t == "3" for _, _, t in frames)  # B-frames present
    pts = [p for p, _, _ in frames]
    if name == "h264.avi":
        assert pts != sorted(pts) and pts[0] == 1                   # what broke the old reader


@pytest.mark.parametrize("name", sorted(VIDEOS))
def test_frames_by_presentation_order_with_seeking(videos, name, monkeypatch):
    path = videos / name
    assert [i for i, _ in video_frames(path, range(N))] == list(range(N))
    assert all(read_index(img) == i for i, img in video_frames(path, range(N)))
    idx = video_index(path)
    assert idx.packets == N and idx.key_decoded[0] == 0 and len(idx.key_decoded) >= 4
    # MP4's sample table and AVI's idx1 list every frame; Matroska's cues do not: one demux pass
    assert idx.source == ("demux pass" if name.endswith(".mkv") else "container index")
    starts = record_starts(monkeypatch)
    rng = np.random.default_rng(len(name))
    wanted_sets = [[0], [5], [1, 2, 3], [11, 12, 13], [23, 24, 25, 36, 49], [47, 48, 49]]
    wanted_sets += [sorted(rng.choice(N, size=int(rng.integers(1, 9)), replace=False)) for _ in range(12)]
    for wanted in wanted_sets:
        for gap in (0, 2, 200):
            got = [(i, read_index(img)) for i, img in video_frames(path, wanted, seek_gap=gap)]
            assert got == [(int(i), int(i)) for i in wanted], (name, gap, wanted)
    # seeks happened, and a seek to keyframe 1 starts at frame GOP
    assert any(k is not None and k > 0 for k in starts)
    run = video._Run(path, None, idx, 1)
    assert run.first == GOP and read_index(next(run.frames)[1].to_ndarray(format="rgb24")) == GOP
    run.close()


def test_mpeg4_keyframe_is_shown_after_frames_decoded_later(videos):
    """MPEG-4 Part 2 B-frames that follow an I-frame in the file are shown before it: the
    keyframe's index is its display rank, not its position in the file."""
    with av.open(str(videos / "mpeg4.avi")) as c:
        stream = c.streams.video[0]
        keys = [n for n, p in enumerate(q for q in c.demux(stream) if q.size) if p.is_keyframe]
    idx = video_index(videos / "mpeg4.avi")
    assert idx.key_decoded[1] == keys[1] < GOP
    run = video._Run(videos / "mpeg4.avi", None, idx, 1)
    assert run.first == GOP                     # decoded after keys[1] frames, shown after GOP frames
    run.close()
    assert [read_index(img) for _, img in video_frames(videos / "mpeg4.avi", [GOP - 2, GOP - 1, GOP], seek_gap=0)] == \
        [GOP - 2, GOP - 1, GOP]


def test_short_missing_and_corrupt_videos(videos, tmp_path):
    path = videos / "h264.avi"
    assert [i for i, _ in video_frames(path, [48, 49, 50, 80], allow_short=True)] == [48, 49]
    with pytest.raises(SampleError, match=r"video ends before frame 50 \(last frame 49\).*h264\.avi.*sample k"):
        list(video_frames(path, [40, 50], sample="k"))
    with pytest.raises(SampleError, match=r"video file missing.*nope\.avi.*sample k"):
        list(video_frames(tmp_path / "nope.avi", [0], sample="k"))
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00AVI LIST" + bytes(200))
    with pytest.raises(SampleError, match=r"(corrupt|unreadable|no video stream).*bad\.avi.*sample k"):
        list(video_frames(bad, [0], sample="k"))


def test_converted_3dhp_and_h36m_samples_show_their_frame(tmp_path, monkeypatch):
    """Conversions with seeking forced (SEEK_GAP 0): every sample's image is the video frame its
    meta names (the fixtures' background brightness encodes the frame)."""
    from tests.dataprep import test_h36m, test_mpi_inf_3dhp
    monkeypatch.setattr(video, "SEEK_GAP", 0)
    starts = record_starts(monkeypatch)
    runner = CliRunner()

    src = tmp_path / "3dhp"
    test_mpi_inf_3dhp.write_train(src)                   # H.264 in AVI with B-frames, 10 frames
    res = runner.invoke(cli, ["mpi_inf_3dhp", str(src), str(tmp_path / "o3"), "--splits", "train", "--cameras", "0,1",
                              "--train-stride", "1", "--frames-per-item", "1", "--crop-size", "96"])
    assert res.exit_code == 0, res.output
    samples = list(iter_samples(tmp_path / "o3" / "train"))
    assert sorted(s.meta["frame"] for s in samples) == sorted(list(range(10)) * 2)
    for s in samples:
        assert abs(np.median(s.image) - (50 + 15 * s.meta["frame"])) <= 3, (s.key, np.median(s.image))

    seq = ("S9", "Walking", "54138969")
    src = tmp_path / "h36m"
    test_h36m.write_original(src, {seq: test_h36m.SEQS[seq]})    # H.264 in MP4 with B-frames, 30 frames
    res = runner.invoke(cli, ["h36m", str(src), str(tmp_path / "o36"), "--splits", "test", "--test-stride", "1",
                              "--frames-per-item", "1", "--crop-size", "96", "--cameras", "54138969"])
    assert res.exit_code == 0, res.output
    samples = list(iter_samples(tmp_path / "o36" / "test"))
    assert sorted(s.meta["frame"] for s in samples) == list(range(30))
    for s in samples:
        assert abs(np.median(s.image) - test_h36m.level(s.meta["frame"])) <= 3, (s.key, np.median(s.image))
    assert sum(k is not None and k > 0 for k in starts) > 20            # most items began with a seek
