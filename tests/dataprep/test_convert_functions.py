"""Every dataset module's `convert` is a plain function: a benchmark or a notebook calls it with
keyword arguments, without click, and bad input raises a domain error (ConversionError,
SampleError, FileNotFoundError, ValueError), never one of click's exceptions. The fixtures are the
dataset tests' own trees in the released layouts."""
import click
import pytest

from dataprep import ganerated, h36m, imagenet, mpi_inf_3dhp, panoptic, pw3d, stb, surreal
from dataprep.common import ConversionError
from shards import iter_samples, read_manifest
from shards.schema import SampleError
from tests.dataprep.test_ganerated import write_release
from tests.dataprep.test_imagenet import write_val_folder
from tests.dataprep.test_stb import write_stb


def test_convert_functions_run_without_click(tmp_path):
    write_stb(tmp_path / "STB", ["B2Counting", "B2Random"])
    m = stb.convert(tmp_path / "STB", tmp_path / "stb" / "train", "train", sequences=["B2"], frames="0:3", crop_size=64)
    assert m["samples"] == 6 and m["sequences"] == ["B2Counting", "B2Random"] and m["views"] == ["sk"]
    assert read_manifest(tmp_path / "stb" / "train")["samples"] == 6
    assert {s.key for s in iter_samples(tmp_path / "stb" / "train")} == \
        {f"stb_train_B2{kind}_sk_{f:04d}" for kind in ("Counting", "Random") for f in range(3)}

    write_release(tmp_path / "GANeratedHands_Release")
    m = ganerated.convert(tmp_path / "GANeratedHands_Release", tmp_path / "ganerated" / "train", "train", crop_size=64)
    assert m["samples"] == 4 and [x["frame"] for x in m["incomplete_frames"]] == ["noObject/0002/0002"]
    samples = list(iter_samples(tmp_path / "ganerated" / "train"))
    assert len(samples) == 4 and all(s.image.shape == (64, 64, 3) and s.joints3d_mm.shape == (21, 3) for s in samples)

    write_val_folder(tmp_path / "val")
    m = imagenet.convert(tmp_path / "val", tmp_path / "imagenet" / "train", shorter_side=32, workers=1)
    assert m["samples"] == 4 and m["layout"] == "flat" and m["shorter_side"] == 32
    assert all(min(s.image.shape[:2]) == 32 for s in iter_samples(tmp_path / "imagenet" / "train"))


def corrupt_stb_image(root):
    (root / "images" / "B2Counting" / "SK_color_1.png").write_bytes(b"not a png")


BAD_CALLS = {   # name -> (make the tree under tmp_path, call, error expected)
    "stb unknown view": (lambda t: write_stb(t / "STB", ["B2Counting", "B2Random"], n_images=1),
                         lambda t: stb.convert(t / "STB", t / "out", "train", sequences=["B2"], views=["top"]), ValueError),
    "stb frames syntax": (lambda t: None, lambda t: stb.convert(t, t / "out", "train", frames="3"), ValueError),
    "stb missing image folder": (lambda t: write_stb(t / "STB", ["B2Counting", "B2Random"], n_images=1),
                                 lambda t: stb.convert(t / "STB", t / "out", "train", sequences=["B3"]), ConversionError),
    "stb frames past handPara": (lambda t: write_stb(t / "STB", ["B2Counting", "B2Random"], n_images=1),
                                 lambda t: stb.convert(t / "STB", t / "out", "train", sequences=["B2"], frames="0:2000"),
                                 ConversionError),
    "stb missing label file": (lambda t: (t / "STB" / "images" / "B5Counting").mkdir(parents=True),
                               lambda t: stb.convert(t / "STB", t / "out", "train", sequences=["B5Counting"]), SampleError),
    "stb corrupt image": (lambda t: (write_stb(t / "STB", ["B2Counting", "B2Random"], n_images=3), corrupt_stb_image(t / "STB")),
                          lambda t: stb.convert(t / "STB", t / "out", "train", sequences=["B2"], frames="0:3",
                                                shuffle_seed=None), ConversionError),
    "ganerated unknown subset": (lambda t: None, lambda t: ganerated.convert(t, t / "out", "train", subsets=["x"]), ValueError),
    "ganerated no release": (lambda t: None, lambda t: ganerated.convert(t, t / "out", "train"), ConversionError),
    "imagenet no images": (lambda t: None, lambda t: imagenet.convert(t, t / "out"), ConversionError),
    "panoptic no sequences": (lambda t: None, lambda t: panoptic.convert(t, t / "out", "train"), ConversionError),
    "panoptic-2d unknown set": (lambda t: None, lambda t: panoptic.convert_2d(t, t / "out", "train", sets=["x"]), ValueError),
    "panoptic-2d missing set": (lambda t: None, lambda t: panoptic.convert_2d(t, t / "out", "test"), ConversionError),
    "h36m no layout": (lambda t: None, lambda t: h36m.convert(t, t / "out", "train"), ConversionError),
    "h36m unknown camera": (lambda t: (t / "S1" / h36m.D3_DIR).mkdir(parents=True),
                            lambda t: h36m.convert(t, t / "out", "train", cameras=["1"]), ValueError),
    "pw3d one mesh file": (lambda t: None, lambda t: pw3d.convert(t, t / "out", "train", smpl_models=t), ValueError),
    "mpi_inf_3dhp stride": (lambda t: None, lambda t: mpi_inf_3dhp.convert(t, t / "out", "train", train_stride=0), ValueError),
    "surreal no cmu folder": (lambda t: None, lambda t: surreal.convert(t, t / "out", "train"), ConversionError),
    "surreal bad run": (lambda t: None, lambda t: surreal.convert(t, t / "out", "train", runs=["x"]), ValueError),
}


@pytest.mark.parametrize("name", BAD_CALLS)
def test_bad_input_raises_domain_errors_not_click(tmp_path, name):
    make_tree, call, expected = BAD_CALLS[name]
    make_tree(tmp_path)
    with pytest.raises(expected) as info:
        call(tmp_path)
    assert not isinstance(info.value, click.ClickException), name
    assert str(info.value)
