"""`trainer export` on a real fine-tuning run: the ONNX file runs in onnxruntime and gives
PyTorch's heatmaps; the safetensors file loads into timm's VisionTransformer plus a plain torch
head (no posemae code) and gives the same heatmaps; config.json says how to decode them."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tests.trainer.tiny_run import DEPTH_BINS, SIZE, finetune_run
from trainer.cli import cli
from trainer.pose_checkpoint import load_checkpoint
from trainer.export import check_onnx, write_export


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return finetune_run(tmp_path_factory.mktemp("export_run"))


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported")
    result = CliRunner().invoke(cli, ["export", "--ckpt", str(run_dir), "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "onnxruntime vs PyTorch" in result.output
    return out


def scaled_up(model):
    """The trained head is still near its 0.001-std initialisation (outputs ~1e-3), where a 1e-4
    tolerance proves little: give every weight O(1) outputs for the comparisons."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("head.") and p.dim() > 1:
                p.normal_(0, 0.2)
        for m in model.head.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return model


def test_onnx_heatmaps_equal_pytorch_within_1e4(exported, run_dir, tmp_path):
    import onnxruntime as ort
    config = json.loads((exported / "config.json").read_text())
    assert config["onnx"]["max_abs_diff_vs_torch"] < 1e-4
    session = ort.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"] and session.get_inputs()[0].shape[0] == "batch"
    model, spec = load_checkpoint(run_dir)
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    got = session.run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    assert got.shape == (3, 21, DEPTH_BINS, SIZE // 4, SIZE // 4)
    assert np.abs(got - want).max() < 1e-4 and np.abs(want).max() > 0   # the trained weights themselves

    # with O(1) outputs, where 1e-4 means something
    big = scaled_up(model)
    write_export(big, spec, tmp_path / "big", check=False)
    with torch.no_grad():
        assert big(x).abs().mean() > 0.1
    assert check_onnx(big, tmp_path / "big" / "model.onnx", SIZE, batch=3) < 1e-4


def test_safetensors_load_into_timm_without_this_project(exported, run_dir):
    """What the README shows: timm's VisionTransformer + the head in plain torch, strict loads."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    from timm.models.vision_transformer import VisionTransformer
    from torch import nn
    config = json.loads((exported / "config.json").read_text())
    arch = config["architecture"]
    state = load_file(str(exported / "model.safetensors"))
    with safe_open(str(exported / "model.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["config"]) == arch

    vit = VisionTransformer(img_size=arch["img_size"], patch_size=arch["patch_size"], embed_dim=arch["embed_dim"],
                            depth=arch["depth"], num_heads=arch["num_heads"], mlp_ratio=arch["mlp_ratio"],
                            num_classes=0, global_pool="")
    vit.load_state_dict({k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")})
    C, K, D = arch["head_channels"], arch["num_joints"], arch["depth_bins"]
    layers, channels = [], arch["embed_dim"]
    for _ in range(arch["deconv_layers"]):
        layers += [nn.ConvTranspose2d(channels, C, 4, 2, 1, bias=False), nn.BatchNorm2d(C), nn.ReLU()]
        channels = C
    head = nn.Sequential(*layers, nn.Conv2d(C, K * D, 1))
    head.load_state_dict({k[len("head."):]: v for k, v in state.items() if k.startswith("head.")})
    vit.eval(), head.eval()

    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    g = SIZE // arch["patch_size"]
    with torch.no_grad():
        tokens = vit.forward_features(x)[:, 1:]                        # drop the class token
        up = 2 ** arch["deconv_layers"]
        out = head(tokens.transpose(1, 2).reshape(2, -1, g, g)).view(2, K, D, up * g, up * g)
        model, _ = load_checkpoint(run_dir)
        want = model(x)
    assert torch.allclose(out, want, atol=1e-6, rtol=0)
    # the weights are the checkpoint's, tensor for tensor
    for k, v in model.state_dict().items():
        assert torch.equal(state[k], v), k


def test_config_describes_input_and_decoding(exported):
    config = json.loads((exported / "config.json").read_text())
    assert config["input"]["shape"] == ["batch", 3, SIZE, SIZE] and config["input"]["mean"] == [0.485, 0.456, 0.406]
    assert config["joint_order"] == "hand21" and len(config["joint_names"]) == 21 and config["root_joint"] == "wrist"
    assert config["heatmap"] == {**config["heatmap"], "depth_bins": DEPTH_BINS, "height": SIZE // 4,
                                 "width": SIZE // 4, "stride_px": 4.0, "depth_range_mm": 400.0}


def test_missing_checkpoint_is_one_clear_error(tmp_path):
    result = CliRunner().invoke(cli, ["export", "--ckpt", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "no checkpoint at" in result.output and "nowhere" in result.output
