"""`trainer predict` with a real fine-tuned checkpoint on folders of images and on a video:
geometry checked by invariants (the same pixels cropped from a larger canvas give the same
prediction shifted by the offset; the joints project back onto joints2d_px; the reference bone
gets its length), one direct comparison with the model's own heatmaps, and the one-line errors."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tests.shards.synthetic import smooth_image
from tests.trainer.tiny_run import SIZE, finetune_run
from trainer.cli import cli
from trainer.pose_checkpoint import load_checkpoint
from trainer.heatmaps import decode_heatmaps
from trainer.predict import REFERENCE_BONE, crop_image, root_depth_for_bone


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return finetune_run(tmp_path_factory.mktemp("predict_run"))


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def run_ok(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output[-3000:]
    return result


def one_error(*args) -> str:
    result = invoke(*args)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def lines(out):
    return [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]


def test_folder_geometry_and_the_model_itself(run_dir, tmp_path):
    hand = smooth_image(48, 3)                      # 48 x 48 RGB
    canvas = np.zeros((80, 100, 3), np.uint8)
    canvas[10:58, 20:68] = hand                     # the same pixels at (20, 10)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(hand).save(photos / "a_hand.png")
    Image.fromarray(canvas).save(photos / "b_canvas.png")
    Image.fromarray(smooth_image(SIZE, 4)).save(photos / "c_exact.png")
    (photos / "notes.txt").write_text("not an image: ignored")
    # a box centred on the pasted hand, 32 px: the 1.5 x context crop is exactly the 48 px square
    (tmp_path / "boxes.json").write_text(json.dumps({"b_canvas.png": [28, 18, 60, 50]}))
    out = tmp_path / "out"
    run_ok("predict", "--ckpt", run_dir, "--out", out, photos, "--boxes", tmp_path / "boxes.json",
           "--intrinsics", 60, 60, 24, 24, "--root-depth-mm", 500)
    a, b, c = lines(out)
    assert [r["image"] for r in (a, b, c)] == ["a_hand.png", "b_canvas.png", "c_exact.png"]
    assert a["box"] == [0, 0, 48, 48] and b["box"] == [20, 10, 68, 58]
    uv_a, uv_b = np.array(a["joints2d_px"]), np.array(b["joints2d_px"])
    assert uv_a.shape == (21, 2) and np.allclose(uv_b, uv_a + [20, 10], atol=1e-2)
    assert np.array(a["joints3d_mm"]).shape == (21, 3) and a["joints3d_mm"][0] == [0, 0, 0]
    # the absolute joints project back onto the 2D prediction with the intrinsics used
    joints = np.array(a["joints3d_mm"]) + a["root_camera_mm"]
    fx, fy, cx, cy = a["intrinsics"]
    assert a["root_camera_mm"][2] == pytest.approx(500) and a["root_depth_from"].startswith("given")
    assert np.allclose(np.stack([fx * joints[:, 0] / joints[:, 2] + cx, fy * joints[:, 1] / joints[:, 2] + cy], 1),
                       uv_a, atol=1e-2)
    # a 32 px image is the network input itself: compare with the model's heatmaps directly
    model, spec = load_checkpoint(run_dir)
    image = np.asarray(Image.open(photos / "c_exact.png").convert("RGB"))
    assert np.array_equal(crop_image(image, 0, 0, SIZE, SIZE), image)
    x = (torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) \
        / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        uvz = decode_heatmaps(model(x))[0].numpy()
    assert np.allclose(c["joints2d_px"], (uvz[:, :2] + 0.5) * 4, atol=1e-2)   # stride 4 px
    assert len(list((out / "overlays").iterdir())) == 3
    assert Image.open(out / "overlays" / "b_canvas.png").size == (100, 80)


def test_default_camera_and_reference_bone(run_dir, tmp_path):
    Image.fromarray(smooth_image(40, 5)).save(tmp_path / "one.jpg")
    run_ok("predict", "--ckpt", run_dir, "--out", tmp_path / "out", tmp_path / "one.jpg", "--no-overlays")
    (r,) = lines(tmp_path / "out")
    assert r["intrinsics"] == [40, 40, 20, 20] and r["intrinsics_from"].startswith("default: f = max(width, height)")
    a, b, length = REFERENCE_BONE["hand21"]
    joints = np.array(r["joints3d_mm"])
    assert r["root_depth_from"] == "reference bone wrist-middle_mcp = 90 mm"
    assert np.linalg.norm(joints[a] - joints[b]) == pytest.approx(length, rel=1e-3)
    assert not (tmp_path / "out" / "overlays").exists()


def test_video_gives_a_line_and_an_overlay_frame_per_frame(run_dir, tmp_path):
    import av
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(5):
            frame = np.ascontiguousarray(np.roll(smooth_image(64, 6)[:48], 3 * i, axis=1))
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    (tmp_path / "boxes.json").write_text(json.dumps({"2": [10, 10, 40, 40]}))
    out = tmp_path / "out"
    run_ok("predict", "--ckpt", run_dir, "--out", out, path, "--boxes", tmp_path / "boxes.json", "--batch-size", 2)
    records = lines(out)
    assert [r["image"] for r in records] == ["0", "1", "2", "3", "4"]
    assert records[2]["box"] == [2.5, 2.5, 47.5, 47.5] and records[0]["box"] == [0, -8, 64, 56]
    with av.open(str(out / "overlay.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 5 and frames[0].shape == (48, 64, 3)


def test_bad_inputs_are_one_clear_error_or_a_skip_record(run_dir, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(smooth_image(40, 7)).save(photos / "good.png")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    msg = one_error("predict", "--ckpt", run_dir, "--out", tmp_path / "o1", photos)
    assert "unreadable image" in msg and "broken.jpg" in msg
    run_ok("predict", "--ckpt", run_dir, "--out", tmp_path / "o2", photos, "--skip-bad")
    broken, good = lines(tmp_path / "o2")
    assert broken["image"] == "broken.jpg" and "unreadable image" in broken["error"] and "joints2d_px" in good

    (photos / "broken.jpg").unlink()
    (tmp_path / "boxes.json").write_text(json.dumps({"good.png": [30, 5, 10, 20]}))
    msg = one_error("predict", "--ckpt", run_dir, "--out", tmp_path / "o3", photos, "--boxes", tmp_path / "boxes.json")
    assert "bad box for good.png" in msg and "no area" in msg and "boxes.json" in msg
    (tmp_path / "boxes.json").write_text(json.dumps({"good.png": [100, 100, 120, 120]}))
    msg = one_error("predict", "--ckpt", run_dir, "--out", tmp_path / "o4", photos, "--boxes", tmp_path / "boxes.json")
    assert "outside the 40x40 image" in msg
    (tmp_path / "boxes.json").write_text("{not json")
    msg = one_error("predict", "--ckpt", run_dir, "--out", tmp_path / "o5", photos, "--boxes", tmp_path / "boxes.json")
    assert "boxes file" in msg and "boxes.json" in msg

    msg = one_error("predict", "--ckpt", tmp_path / "no_run", "--out", tmp_path / "o6", photos)
    assert "no checkpoint at" in msg and "no_run" in msg


def test_root_depth_for_bone_recovers_a_known_camera_depth():
    k = (500.0, 520.0, 160.0, 120.0)
    root = np.array([30.0, -20.0, 640.0])
    tip = root + [55.0, 60.0, -35.0]                      # a 90.1 mm bone, tip nearer the camera
    uv = [(k[0] * p[0] / p[2] + k[2], k[1] * p[1] / p[2] + k[3]) for p in (root, tip)]
    z = root_depth_for_bone(uv[0], uv[1], 0.0, tip[2] - root[2], k, float(np.linalg.norm(tip - root)))
    assert z == pytest.approx(640.0, rel=1e-9)
    assert root_depth_for_bone(uv[0], uv[1], 0.0, 200.0, k, 90.0) is None   # depth gap alone > bone


def test_mirrored_left_hand_gives_the_mirror_image_of_the_prediction(run_dir, tmp_path):
    """A left hand is the mirror of a right one: --mirror (here per image, in the boxes file)
    flips the crop for the model and the prediction back, so a mirrored photo gives the mirrored
    joints: u -> width - u in 2D, X -> -X in 3D (principal point on the centre line)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    hand = smooth_image(48, 8)
    Image.fromarray(hand).save(photos / "right.png")
    Image.fromarray(np.ascontiguousarray(hand[:, ::-1])).save(photos / "left.png")
    (tmp_path / "boxes.json").write_text(json.dumps({"left.png": {"box": [0, 0, 48, 48], "mirror": True}}))
    run_ok("predict", "--ckpt", run_dir, "--out", tmp_path / "out", photos, "--boxes", tmp_path / "boxes.json",
           "--context", 1.0, "--intrinsics", 60, 60, 24, 24, "--root-depth-mm", 500, "--no-overlays")
    left, right = lines(tmp_path / "out")
    assert left["mirrored"] is True and right["mirrored"] is False and left["box"] == right["box"]
    uv_l, uv_r = np.array(left["joints2d_px"]), np.array(right["joints2d_px"])
    assert np.allclose(uv_l[:, 0], 48 - uv_r[:, 0], atol=1e-2) and np.allclose(uv_l[:, 1], uv_r[:, 1], atol=1e-2)
    j_l, j_r = np.array(left["joints3d_mm"]), np.array(right["joints3d_mm"])
    assert np.allclose(j_l * [-1, 1, 1], j_r, atol=1e-2) and np.abs(j_r[:, 0]).max() > 0
