"""The real stack on this CPU machine: DALI reading webdataset tars, DeepSpeed engines,
checkpoints, and the deepspeed launcher with two ranks."""
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import deepspeed
from nvidia.dali import fn, pipeline_def, types

from shards.device import ensure_distributed_env
from shards.writer import write_dali_index

REPO = Path(__file__).resolve().parents[1]


def test_cpu_selected_automatically():
    assert os.environ["DS_ACCELERATOR"] == "cpu"
    from deepspeed.accelerator import get_accelerator
    assert get_accelerator().device_name() == "cpu"
    from shards.device import dali_device_id
    assert dali_device_id() is None


def _write_tar(path: Path, images: list[np.ndarray]) -> None:
    with tarfile.open(path, "w") as tf:
        for i, img in enumerate(images):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=100)
            for name, data in ((f"s{i:03d}.jpg", buf.getvalue()), (f"s{i:03d}.label.f32", np.float32([i, 2 * i]).tobytes())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


def test_dali_cpu_reads_webdataset_tar(tmp_path):
    rng = np.random.default_rng(0)
    # flat colour blocks survive JPEG almost exactly, so decoded pixels are checkable
    colours = rng.integers(0, 256, size=(6, 3))
    images = [np.broadcast_to(c.astype(np.uint8), (32, 48, 3)).copy() for c in colours]
    tar = tmp_path / "data.tar"
    _write_tar(tar, images)
    idx = tmp_path / "data.idx"
    assert write_dali_index(tar, idx) == 6

    @pipeline_def(batch_size=3, num_threads=1, device_id=None)
    def pipe():
        jpg, label = fn.readers.webdataset(paths=[str(tar)], index_paths=[str(idx)], ext=["jpg", "label.f32"],
                                           dtypes=[types.UINT8, types.FLOAT], random_shuffle=False, name="r")
        return fn.decoders.image(jpg, device="cpu", output_type=types.RGB), label

    p = pipe()
    p.build()
    seen = []
    for _ in range(2):
        imgs, labels = p.run()
        for j in range(3):
            img, lab = np.asarray(imgs.at(j)), np.asarray(labels.at(j))
            i = int(lab[0])
            assert lab[1] == 2 * i
            assert img.shape == (32, 48, 3)
            assert np.abs(img.astype(int) - colours[i]).max() <= 2
            seen.append(i)
    assert sorted(seen) == list(range(6))


def _engine(seed=0):
    ensure_distributed_env()
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    config = {"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 1,
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "torch_adam": True}},
              "zero_optimization": {"stage": 1}, "gradient_clipping": 1.0}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    return engine


def _flat(engine):
    return torch.cat([p.detach().flatten().clone() for p in engine.module.parameters()])


def test_deepspeed_engine_steps_saves_and_loads(tmp_path):
    engine = _engine()
    before = _flat(engine)
    g = torch.Generator().manual_seed(1)
    losses = []
    x, y = torch.randn(8, 16, generator=g), torch.randn(8, 4, generator=g)
    for _ in range(5):
        loss = torch.nn.functional.mse_loss(engine(x), y)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    trained = _flat(engine)
    assert not torch.equal(trained, before)
    engine.save_checkpoint(str(tmp_path), tag="step5", client_state={"step": 5})

    fresh = _engine(seed=123)
    assert not torch.equal(_flat(fresh), trained)
    path, client = fresh.load_checkpoint(str(tmp_path))
    assert client["step"] == 5 and Path(path).parent.name == "step5"
    assert torch.equal(_flat(fresh), trained)
    # the optimizer state came back too: one more identical step gives identical weights
    for e in (engine, fresh):
        loss = torch.nn.functional.mse_loss(e(x), y)
        e.backward(loss)
        e.step()
    assert torch.equal(_flat(engine), _flat(fresh))


def _reference_two_rank_weights():
    """What data-parallel training in tests/ds_allreduce_job.py must give: AdamW on the mean of
    both ranks' gradients, clipped to norm 1."""
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gens = [torch.Generator().manual_seed(100 + r) for r in range(2)]
    for _ in range(3):
        grads = []
        for g in gens:
            model.zero_grad()
            model(torch.randn(4, 8, generator=g)).pow(2).mean().backward()
            grads.append([p.grad.clone() for p in model.parameters()])
        for p, g0, g1 in zip(model.parameters(), *grads):
            p.grad = (g0 + g1) / 2
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_deepspeed_launcher_two_ranks_allreduce(tmp_path):
    env = dict(os.environ, DS_ACCELERATOR="cpu")
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", "29611",
           str(REPO / "tests" / "ds_allreduce_job.py"), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    w0, w1 = (torch.tensor(r["weights"]) for r in ranks)
    assert torch.equal(w0, w1)
    torch.testing.assert_close(w0, _reference_two_rank_weights(), rtol=1e-5, atol=1e-6)
    # DeepSpeed's shared-memory all-reduce buffers of this port are gone (they filled /dev/shm)
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_*_29611_*"))
