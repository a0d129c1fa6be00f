"""trainer.engine: the DeepSpeed loop shared by the stages, on a small regression problem whose
data is an in-memory loader with the same protocol as shards.pipelines.Loader (len, iter,
state_dict/load_state_dict, epoch). The stages themselves, on DALI shards, are in test_stages.py."""
import json
import math
import shutil

import pytest
import torch

from trainer import engine
from trainer.engine import ConfigError, NonFiniteLossError, StepOutput, TrainSettings


class ListLoader:
    """Batches of (x, y, key) from fixed tensors, reshuffled per epoch from (seed, epoch), this
    rank's slice only; resumable at any batch."""

    def __init__(self, x, y, batch_size, seed=0, rank=0, world_size=1):
        self.x, self.y, self.batch_size, self.seed = x, y, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0

    def __len__(self):
        return len(self.x) // (self.batch_size * self.world_size)

    def __iter__(self):
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.seed * 1000 + self.epoch))
        mine = order[self.rank::self.world_size]
        while self.position < len(self):
            idx = mine[self.position * self.batch_size:(self.position + 1) * self.batch_size]
            self.position += 1
            yield {"x": self.x[idx], "y": self.y[idx], "key": [f"s{int(i):04d}" for i in idx]}
        self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self):
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state):
        self.epoch, self.position = state["epoch"], state["position"]


def regression_data(n=64, poison=None):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    y = x @ torch.randn(8, 2, generator=g) + 0.1
    if poison is not None:
        x[poison] = float("inf")
    return x, y


def step_fn(model_engine, batches):
    b = batches["train"]
    loss = torch.nn.functional.mse_loss(model_engine(b["x"]), b["y"])
    return StepOutput(loss, {"abs_err": (model_engine.module(b["x"]) - b["y"]).abs().mean().detach()}, b["key"])


def write_config(path, micro=4, accumulation=1, lr=0.05, **extra):
    config = {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": accumulation,
              "optimizer": {"type": "AdamW", "params": {"lr": lr, "betas": [0.9, 0.95], "weight_decay": 0.05,
                                                        "torch_adam": True}},
              "gradient_clipping": 1.0, **extra}
    path.write_text(json.dumps(config))
    return path


def train(run_dir, config, *, epochs=2.0, max_steps=None, resume=False, data=None, checkpoint_every=2, keep=2):
    settings = TrainSettings(run_dir=run_dir, ds_config=config, epochs=epochs, warmup_epochs=0.5,
                             checkpoint_every=checkpoint_every, keep_checkpoints=keep, log_every=1,
                             figure_every=0, resume=resume, max_steps=max_steps)
    run = engine.start_run("toy", settings, {"hidden": 16}, {"class": "Toy", "hidden": 16})
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    x, y = data if data is not None else regression_data()
    loader = ListLoader(x, y, run.micro_batch, seed=3, rank=run.dist.rank, world_size=run.dist.world_size)
    summary = engine.fit(run, model, {"train": loader}, step_fn, engine.param_groups(model, 0.05))
    return model, summary


def flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# -- the DeepSpeed config -------------------------------------------------------------------
def test_batch_sizes_are_derived_and_checked(tmp_path):
    cfg = write_config(tmp_path / "a.json", micro=4, accumulation=2)
    c = engine.read_ds_config(cfg, world_size=2)
    assert (c["train_batch_size"], c["train_micro_batch_size_per_gpu"], c["gradient_accumulation_steps"]) == (16, 4, 2)

    paper = engine.read_ds_config(engine.DS_CONFIG_DIR / "pretrain_vitb_4096.json", world_size=8)
    assert (paper["train_batch_size"], paper["gradient_accumulation_steps"]) == (4096, 8)   # 64 x 8 x 8
    assert paper["optimizer"]["params"]["betas"] == [0.9, 0.95] and paper["bf16"]["enabled"]
    assert engine.read_ds_config(engine.DS_CONFIG_DIR / "pretrain_vitb_4096.json", 64)["gradient_accumulation_steps"] == 1

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train_batch_size": 100, "train_micro_batch_size_per_gpu": 8,
                               "gradient_accumulation_steps": 4, "optimizer": {"params": {"lr": 1}}}))
    with pytest.raises(ConfigError, match=r"bad.json: train_batch_size 100 != micro-batch 8 x gradient accumulation "
                                          r"4 x world size 3 = 96"):
        engine.read_ds_config(bad, world_size=3)
    with pytest.raises(ConfigError, match="4096 is not a multiple of micro-batch 64 x world size 3"):
        engine.read_ds_config(engine.DS_CONFIG_DIR / "pretrain_vitb_4096.json", world_size=3)
    with pytest.raises(ConfigError, match="scheduler"):
        engine.read_ds_config(write_config(tmp_path / "s.json", scheduler={"type": "WarmupLR"}), 1)
    with pytest.raises(ConfigError, match="nowhere.json not found"):
        engine.read_ds_config(tmp_path / "nowhere.json", 1)


def test_a_resume_keeps_the_global_batch_and_re_derives_the_accumulation(tmp_path):
    cfg = write_config(tmp_path / "a.json", micro=4, accumulation=1)
    for world, accumulation in ((1, 4), (2, 2), (4, 1)):
        c = engine.read_ds_config(cfg, world_size=world, global_batch=16)
        assert (c["train_batch_size"], c["train_micro_batch_size_per_gpu"], c["gradient_accumulation_steps"]) == \
            (16, 4, accumulation)
    with pytest.raises(ConfigError, match=r"global batch 16 does not split into 8 ranks x micro-batch 4.*"
                                          r"train_micro_batch_size_per_gpu in .*a.json to a divisor of 2 \(e.g. 2\)"):
        engine.read_ds_config(cfg, world_size=8, global_batch=16)
    with pytest.raises(ConfigError, match="resume on a number of ranks that divides 16"):
        engine.read_ds_config(cfg, world_size=3, global_batch=16)


def test_every_shipped_config_reads_on_one_and_eight_ranks():
    for path in sorted(engine.DS_CONFIG_DIR.glob("*.json")):
        for world in ((1, 2) if path.name.startswith("cpu_") else (1, 8)):
            c = engine.read_ds_config(path, world)
            assert c["train_batch_size"] == c["train_micro_batch_size_per_gpu"] * c["gradient_accumulation_steps"] * world
            assert c["optimizer"]["params"]["torch_adam"] is True and "gradient_clipping" in c


def test_lr_schedule_warmup_then_half_cosine():
    assert engine.lr_at(0, 1.0, 10, 110) == 0.0
    assert engine.lr_at(5, 1.0, 10, 110) == 0.5
    assert engine.lr_at(10, 1.0, 10, 110) == 1.0
    assert engine.lr_at(60, 1.0, 10, 110, min_lr=0.2) == pytest.approx(0.6)   # cosine midpoint
    assert engine.lr_at(110, 1.0, 10, 110, min_lr=0.2) == pytest.approx(0.2)
    assert engine.lr_at(35, 2.0, 10, 110) == pytest.approx(1.0 + math.cos(math.pi * 0.25))


def test_param_groups_weight_decay_and_layer_decay():
    from trainer.mae import MaskedAutoencoder
    from trainer.pose import PoseModel
    mae = MaskedAutoencoder(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2,
                            decoder_embed_dim=32, decoder_num_heads=2)
    groups = engine.param_groups(mae, 0.05)
    names = {id(p): n for n, p in mae.named_parameters()}
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    decay = {names[id(p)] for g in groups if g["weight_decay"] == 0.05 for p in g["params"]}
    assert "encoder.cls_token" in no_decay and "encoder.blocks.0.attn.qkv.bias" in no_decay
    assert "encoder.norm.weight" in no_decay and "encoder.blocks.1.mlp.fc1.weight" in decay
    assert "decoder_pred.weight" in decay and len(no_decay) + len(decay) == len(names)

    pose = PoseModel(dict(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2), num_joints=3,
                     depth_bins=4, head_channels=8)
    groups = engine.param_groups(pose, 0.1, layer_decay=0.5)
    names = {id(p): n for n, p in pose.named_parameters()}
    scale = {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    # 4 layers: embeddings, block 0, block 1, then the final norm and the head
    assert scale["encoder.patch_embed.proj.weight"] == 0.125 and scale["encoder.blocks.0.mlp.fc1.weight"] == 0.25
    assert scale["encoder.blocks.1.attn.qkv.weight"] == 0.5 and scale["head.0.weight"] == 1.0


# -- the loop -------------------------------------------------------------------------------
def test_fit_logs_checkpoints_and_resumes_bit_identically(tmp_path):
    cfg = write_config(tmp_path / "cfg.json")
    ref_model, summary = train(tmp_path / "ref", cfg)          # 64 samples / 4 = 16 steps per epoch
    assert summary["steps"] == 32 and summary["steps_per_s"] > 0
    ckpt = tmp_path / "ref" / "checkpoints"
    assert (ckpt / "latest").read_text() == "step00000032"
    assert sorted(p.name for p in ckpt.iterdir() if p.is_dir()) == ["step00000030", "step00000032"]
    # the loader's position: all 16 batches of epoch 1 consumed
    assert json.loads((ckpt / "step00000032" / "rank00000.json").read_text())["loaders"]["train"] == \
        {"epoch": 1, "position": 16}
    lines = metrics(tmp_path / "ref")
    steps = [m for m in lines if "loss" in m]
    assert [m["step"] for m in steps] == list(range(1, 33))
    assert steps[0]["lr"] == 0.0 and steps[8]["lr"] == pytest.approx(0.05)   # 8 warm-up steps
    first, last = (sum(m["loss"] for m in part) / 8 for part in (steps[:8], steps[-8:]))
    assert last < 0.5 * first   # it learns (single 4-sample batches are noisy)
    assert lines[-1]["event"] == "end" and lines[-1]["peak_rss_mib"] > 0
    config = json.loads((tmp_path / "ref" / "config.json").read_text())
    assert config["ds_config"]["train_batch_size"] == 4 and config["options"]["hidden"] == 16
    assert config["code_version"] and config["ds_config"]["csv_monitor"]["enabled"]
    assert (tmp_path / "ref" / "monitor" / "csv" / "Train_Samples_loss.csv").is_file()

    # Stop after 11 steps (mid-epoch, between checkpoints), resume, and finish: same weights.
    part = tmp_path / "part"
    _, s = train(part, cfg, max_steps=11)
    assert s["steps"] == 11 and (part / "checkpoints" / "latest").read_text() == "step00000011"
    # resume from the checkpoint before (step 10), so the steps after it are replayed
    shutil.rmtree(part / "checkpoints" / "step00000011")
    (part / "checkpoints" / "latest").write_text("step00000010")
    resumed, s = train(part, cfg, resume=True)
    assert s["steps"] == 32 and s["steps_this_session"] == 22
    assert torch.equal(flat(resumed), flat(ref_model))
    assert [m for m in metrics(part) if m.get("event") == "resume"][0]["step"] == 10


def test_resume_refuses_other_options_and_fresh_start_refuses_old_checkpoints(tmp_path):
    cfg = write_config(tmp_path / "cfg.json")
    train(tmp_path / "run", cfg, max_steps=2)
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        train(tmp_path / "run", cfg, max_steps=2)
    with pytest.raises(ConfigError, match=r"other options .*epochs: 2.0 -> 3.0"):
        train(tmp_path / "run", cfg, epochs=3.0, resume=True)
    # another DeepSpeed config file may change the micro-batch, nothing else of the maths
    other_lr = write_config(tmp_path / "other_lr.json", micro=2, lr=0.01)
    with pytest.raises(ConfigError, match=r"DeepSpeed config \(.*other_lr.json\) that differs .* more than the "
                                          r"micro-batch: optimizer: .*'lr': 0.05.* -> .*'lr': 0.01"):
        train(tmp_path / "run", other_lr, resume=True)


def test_nonfinite_loss_stops_naming_samples_and_keeps_last_checkpoint(tmp_path):
    cfg = write_config(tmp_path / "cfg.json")
    x, y = regression_data()
    order = torch.randperm(64, generator=torch.Generator().manual_seed(3000))   # epoch 0's order
    poisoned = int(order[4 * 4 + 1])                                            # in step 5's batch
    with pytest.raises(NonFiniteLossError, match=rf"step 5 .*s{poisoned:04d}"):
        train(tmp_path / "nan", cfg, data=regression_data(poison=poisoned))
    ckpt = tmp_path / "nan" / "checkpoints"
    assert (ckpt / "latest").read_text() == "step00000004"
    assert sorted(p.name for p in ckpt.iterdir() if p.is_dir()) == ["step00000002", "step00000004"]
    event = metrics(tmp_path / "nan")[-1]
    assert event["event"] == "nonfinite_loss" and event["step"] == 5
    assert f"s{poisoned:04d}" in event["ranks"][0]["keys"]


def test_gradient_accumulation_matches_the_big_batch(tmp_path):
    """micro 2 x accumulation 2 takes the same optimizer steps as micro 4 x 1: the same 4 samples
    per step, gradients averaged (up to float summation order)."""
    big, _ = train(tmp_path / "big", write_config(tmp_path / "b.json", micro=4), epochs=1.0)
    x, y = regression_data()

    class Pairs(ListLoader):  # the same 4-sample batches, split in two micro-batches
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.inner = ListLoader(x, y, 4, seed=3)

        def __len__(self):
            return 2 * len(self.inner)

        def __iter__(self):
            for b in self.inner:
                yield {k: v[:2] for k, v in b.items()}
                yield {k: v[2:] for k, v in b.items()}

    settings = TrainSettings(run_dir=tmp_path / "acc", ds_config=write_config(tmp_path / "a.json", micro=2, accumulation=2),
                             epochs=1.0, warmup_epochs=0.5, checkpoint_every=100, log_every=1, figure_every=0)
    run = engine.start_run("toy", settings, {}, {"class": "Toy"})
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    s = engine.fit(run, model, {"train": Pairs(x, y, 2)}, step_fn, engine.param_groups(model, 0.05))
    assert s["steps"] == 16
    torch.testing.assert_close(flat(model), flat(big), rtol=1e-5, atol=1e-6)
