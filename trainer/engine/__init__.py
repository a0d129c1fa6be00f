"""The DeepSpeed training loop every stage shares (segnet, pretrain, finetune).

A stage builds its model and its DALI loaders and hands them to `fit` with a `step_fn` that turns
one batch into a loss; everything else lives here, once, one concern per module:

- distributed start-up (`distributed.py`: `init_distributed`): the deepspeed launcher's RANK/WORLD_SIZE, or a world
  of one for a plain `trainer <stage>`; gloo on CPU (DS_ACCELERATOR=cpu), NCCL on GPUs;
- the DeepSpeed JSON (`config.py`: `read_ds_config`): the global batch must equal micro-batch x gradient
  accumulation x world size (one clear error at start otherwise); the CSV monitor (and the
  TensorBoard one when tensorboard is installed) is pointed into the run directory;
- optimizer parameter groups (`schedule.py`: `param_groups`): no weight decay on biases, 1-D parameters and the
  model's `no_weight_decay()`; optional layer-wise lr decay (timm's helper, ViTPose/BEiT style);
- the learning rate, set by us before every optimizer step (`schedule.py`: `lr_at`): linear warm-up, then a
  half-cycle cosine to `min_lr`, per step as MAE does, times each group's `lr_scale`. The JSON's
  optimizer lr is the peak lr; the JSON must not carry a DeepSpeed "scheduler" (it would fight
  this one, and it cannot know the run's length);
- the run directory `runs/<name>/` (`run.py`): config.json (every option, the resolved DeepSpeed config, the
  code version), metrics.jsonl, monitor/ (DeepSpeed's CSV monitor), figures/*.png, checkpoints/;
- checkpoints every N steps and at the end, the last k kept (`saving.py`; the layout:
  trainer/checkpoints.py); each holds DeepSpeed's state (model,
  optimizer, step) plus our sidecars posemae.json (stage, model signature, step, world size) and
  rank<r>.json (that rank's loader positions); `latest` is replaced atomically once every rank's
  files are complete and fsynced, so it only ever names a complete checkpoint (a kill -9 mid-write
  leaves the previous one as `latest`). A write that fails on any rank (disk full) stops every
  rank with one CheckpointWriteError naming the error and the `latest` still intact; the
  incomplete tag directory is removed, nothing older is touched;
- `--resume`: model, optimizer, step, schedule and every loader's position come back; randomness
  is re-seeded from (seed, rank, micro-step) before every micro-batch, so a run killed at any
  moment and resumed gives the same weights as an uninterrupted run (bit for bit on CPU, where
  deterministic algorithms are switched on);
- a sample DALI cannot read stops the run with one SampleError naming its shard and key; with
  --skip-bad-samples the loader leaves it out (shards.pipelines.Loader) and the loop counts it
  (metrics lines' bad_samples, summed over ranks) and logs it (stderr and
  ranks/rank<r>-bad-samples.jsonl);
- a rank that dies (kill -9, OOM, a lost node; `faults.py`): the deepspeed launcher SIGTERMs the others, which
  exit at once, even from inside a collective, naming the dead rank and the checkpoint --resume
  continues from (RankLostError where a collective notices the dead peer first); a peer that hangs
  or whose node vanished without closing its connections stops the others after --dist-timeout;
- a NaN/inf loss on any rank stops every rank with the step and the batch's sample keys logged;
  nothing is saved after it, so the last good checkpoint stays `latest`;
- the loop itself (`loop.py`: `fit`); progress on rank 0 (a tqdm bar on a terminal, a plain line every 10 s in a log:
  shards.progress), and periodic figures from the stage's `figure_fn`;
- per rank, ranks/rank<r>.json at the end (steps/s, peak RSS, a digest of the parameters, which
  data-parallel ranks must share) and, with --log-keys, every micro-batch's sample keys.

The run directory must be on a filesystem every node sees (checkpoints are written by all ranks,
`latest` by rank 0). ZeRO stage 3 and fp16 are refused (bf16 or fp32; stage 0-2).

Also: `options.py` (TrainSettings, the shared click options, clear_errors: the click layer) and
`images.py` (helpers for the stages' step and figure functions). The errors are in trainer.errors.

Public API (what the stages use; each name comes from the module named above)
    TrainSettings(run_dir, ds_config, epochs, warmup_epochs, ...)   training_options(...)   click decorator
    settings_from_options(options, stage, default_config) -> TrainSettings;  clear_errors(command)
    init_distributed(timeout_s=1800.0) -> Dist(rank, world_size, local_rank)
    read_ds_config(path, world_size, global_batch=None) -> dict;  default_ds_config(recipe, cpu_name) -> Path
    param_groups(model, weight_decay, layer_decay=None) -> list[dict]
    lr_at(step, base_lr, warmup_steps, total_steps, min_lr=0.0) -> float
    start_run(stage, settings, options, model_signature) -> Run     (dist + config + run dir)
    fit(run, model, loaders: dict, step_fn, groups, figure_fn=None) -> summary dict
        step_fn(engine, batches: dict[name, batch]) -> StepOutput(loss, metrics, keys)
        figure_fn(module, batches, step) -> {name: PIL.Image}          rank 0 only
    model_inputs(engine, images), to_uint8(images), image_grid(rows), weights_digest(module)
    log_images(run, images, step)   figures into TensorBoard (and W&B with --wandb)
"""
from trainer.checkpoints import META_FILE, check_loads_safely, checkpoint_tag_dir, read_checkpoint_meta
from trainer.errors import CheckpointWriteError, ConfigError, NonFiniteLossError, RankLostError

from .config import DS_CONFIG_DIR, REPO_ROOT, add_monitors, default_ds_config, read_ds_config
from .distributed import Dist, init_distributed
from .images import image_grid, model_inputs, to_uint8
from .loop import fit, weights_digest
from .options import TrainSettings, clear_errors, settings_from_options, training_options
from .run import Run, StepOutput, log_images, start_run
from .schedule import lr_at, param_groups, seed_micro_step, set_lr

__all__ = ["META_FILE", "check_loads_safely", "checkpoint_tag_dir", "read_checkpoint_meta", "CheckpointWriteError",
           "ConfigError", "NonFiniteLossError", "RankLostError", "DS_CONFIG_DIR", "REPO_ROOT", "add_monitors",
           "default_ds_config", "read_ds_config", "Dist", "init_distributed", "image_grid", "model_inputs", "to_uint8",
           "fit", "weights_digest", "TrainSettings", "clear_errors", "settings_from_options", "training_options",
           "Run", "StepOutput", "log_images", "start_run", "lr_at", "param_groups", "seed_micro_step", "set_lr"]
