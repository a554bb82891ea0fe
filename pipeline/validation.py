"""One pass over every setting a command will use, before any heavy import or any file is written.

Hydra has already checked types and unknown keys against :mod:`pipeline.schema`; this checks ranges, choices,
cross-field rules and the inputs a run reads (the model's files, a saved filter, a writable output folder) for
each stage the command runs (:func:`pipeline.plan.stages_to_run`). Every failure is a :class:`ConfigError`
naming the setting, its value and what is allowed. Torch-free by design: a bad setting fails in about a second.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.decoding.settings import DecodeSettings, check_probability
from pipeline.errors import ConfigError, InputError
from pipeline.input_files import check_safetensors, read_json_object
from pipeline.model_files import locate
from pipeline.plan import STAGES, decode_settings, stages_to_run, sweep_settings
from pipeline.tasks.base import SPLITS
from pipeline.tasks.registry import build_task

FEATURES = ("confidence", "entropy", "margin", "position", "step", "committed", "kl", "stability", "is_end",
            "distance_to_committed", "distance_to_end", "masked_run_before")  # pipeline/decoding/features.py
DEVICE = re.compile(r"^(cpu|auto|cuda|cuda:\d+)$")
DTYPES = ("auto", "float32", "bfloat16", "float16")
FAMILIES = ("embedded", "llada", "dream")  # models/families.py
IMPLEMENTATIONS = ("native", "remote")  # models/checkpoint.py, or the hub's modeling code
LOGGERS = ("wandb", "none")
LOGGER_MODES = ("offline", "online", "disabled")
TRAJECTORY_POLICIES = ("egp", "vanilla")
LOSS_ON = ("all", "masked")
LAUNCHERS = ("local", "slurm")
VERIFY_MODES = ("content", "size")
# stages that may load the model
MODEL_STAGES = ("trajectories", "train_policy", "sweep", "aggregate", "evaluate", "benchmark")
SEED_RANGE = (0, 2**32 - 1)  # what numpy, Python's random and Lightning's seed_everything all accept


def validate(cfg: DictConfig, multirun: bool = False) -> list[str]:
    """Check everything the command will use; returns the stages it runs, upstream first."""
    if cfg.stage not in STAGES:
        raise ConfigError("stage", cfg.stage, f"allowed: {', '.join(STAGES)}")
    check_numbers(cfg)
    check_common(cfg)
    check_launcher(cfg, multirun)
    stages = stages_to_run(cfg, multirun)
    if set(stages) & set(MODEL_STAGES):
        check_model(cfg)
    for stage in stages:
        CHECKS[stage](cfg, multirun)
    return stages


def at_least(cfg: DictConfig, setting: str, minimum: float, kind: str = "an integer") -> None:
    value = OmegaConf.select(cfg, setting)
    if value is None or value < minimum:
        raise ConfigError(setting, value, f"allowed: {kind} >= {minimum:g}")


def one_of(value, setting: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(setting, value, f"allowed: {', '.join(allowed)}")


def leaves(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted setting, value) of every leaf of a plain config tree; list items as ``name[i]``."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from leaves(value, f"{path}[{index}]")
    else:
        yield path, node


def check_numbers(cfg: DictConfig) -> None:
    """The schema-wide rules, whatever the setting: every number is finite (a NaN threshold or temperature would
    decode garbage and write invalid JSON) and every seed is one all the random generators accept. Read unresolved,
    so an interpolated value is named where the user set it (``seed``, not ``decode.seed: ${seed}``)."""
    for setting, value in leaves(OmegaConf.to_container(cfg, resolve=False)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(setting, value, "allowed: a finite number")
        if setting.rpartition(".")[2] == "seed" and isinstance(value, int) and \
                not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
            raise ConfigError(setting, value, f"allowed: an integer from {SEED_RANGE[0]} to {SEED_RANGE[1]}")


def check_common(cfg: DictConfig) -> None:
    if not DEVICE.match(str(cfg.device)):  # whether it exists is known only where the stage runs (config.py)
        raise ConfigError("device", cfg.device, "allowed: auto, cpu, cuda, cuda:N")
    if cfg.threads is not None:
        at_least(cfg, "threads", 1)
    one_of(cfg.logger.kind, "logger.kind", LOGGERS)
    if cfg.logger.kind == "wandb":
        one_of(cfg.logger.mode, "logger.mode", LOGGER_MODES)
    one_of(cfg.verify_artifacts, "verify_artifacts", VERIFY_MODES)
    if not str(cfg.output_dir).strip():
        raise ConfigError("output_dir", "''", "allowed: a folder path (it is created when missing)")
    check_writable(Path(cfg.output_dir), "output_dir")
    decode_settings(cfg).validate()  # every stage reads it (trajectories' window defaults to it): named as the user's


def check_launcher(cfg: DictConfig, multirun: bool) -> None:
    la = cfg.launcher
    one_of(la.kind, "launcher.kind", LAUNCHERS)
    if la.kind == "local":
        return
    if multirun:
        raise ConfigError("launcher", la.kind, "launcher=slurm submits the experiment's whole DAG itself; for a "
                                               "Hydra multirun use hydra/launcher=slurm_gpu (or slurm_local)")
    for setting in ("time_min", "cpus_per_task", "mem_gb", "array_parallelism"):
        at_least(cfg, f"launcher.{setting}", 1)
    for setting in ("max_requeues", "signal_delay_s"):
        at_least(cfg, f"launcher.{setting}", 0)
    for setting in ("sweep_tasks", "gpus_per_node"):
        if OmegaConf.select(cfg, f"launcher.{setting}") is not None:
            at_least(cfg, f"launcher.{setting}", 1)
    if la.poll_s <= 0:
        raise ConfigError("launcher.poll_s", la.poll_s, "allowed: a number of seconds > 0")
    if la.signal_delay_s >= la.time_min * 60:
        raise ConfigError("launcher.signal_delay_s", la.signal_delay_s,
                          f"allowed: less than launcher.time_min ({la.time_min} min) in seconds")
    check_writable(Path(la.folder), "launcher.folder")
    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
    if cfg.stage != "status" and missing:
        raise ConfigError("launcher", la.kind, f"{' and '.join(missing)} not on PATH: submit from a machine of the "
                                               "cluster, or use launcher=local")


def check_writable(path: Path, setting: str) -> None:
    """The folder exists and is writable, or the nearest existing parent is a writable folder. Tried, not
    inferred from permission bits: a pseudo file system (``/proc``) or a read-only mount answers ``os.access`` with
    yes and then refuses the write."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(setting, path, f"{existing} is not a folder; allowed: a folder path that can be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(setting, path, f"{existing} is not writable; allowed: a writable folder")
    try:
        with tempfile.TemporaryDirectory(dir=existing, prefix=".write-test-"):
            pass
    except OSError as error:
        raise ConfigError(setting, path, f"{existing} refuses new files ({error.strerror}); allowed: a writable "
                                         "folder") from error


def check_model(cfg: DictConfig) -> None:
    m = cfg.model
    one_of(m.family, "model.family", FAMILIES)
    one_of(m.dtype, "model.dtype", DTYPES)
    one_of(m.implementation, "model.implementation", IMPLEMENTATIONS)
    if m.random_weights:
        check_random_architecture(m)
        return
    if m.family != "embedded" and m.implementation == "remote" and not m.trust_remote_code:
        raise ConfigError("model.trust_remote_code", False, f"model.implementation=remote runs the {m.family} "
                                                            "model's own modeling code; allowed: true")
    if m.path is None:
        raise ConfigError("model.path", None, "allowed: a local directory or a hub id (null only with "
                                              "model.random_weights=true)")
    check_model_files(Path(locate(m.path, m.allow_download)))


RANDOM_ARCHITECTURES = ("llada", "Dream")  # model_type of the native classes (models/checkpoint.py NATIVE)


def check_random_architecture(m: DictConfig) -> None:
    """Random weights are built by the native classes from ``model.architecture``: a known ``model_type`` and
    positive sizes (the classes themselves name any other field they refuse, at load)."""
    if m.implementation != "native":
        raise ConfigError("model.implementation", m.implementation, "random weights are built by the native "
                                                                    "classes; allowed: native")
    for name in ("mask_token_id", "eos_token_id"):
        if m[name] is None:
            raise ConfigError(f"model.{name}", None, "random weights come with no tokenizer to name it; allowed: "
                                                     "the architecture's token id")
    architecture = m.architecture or {}
    one_of(architecture.get("model_type"), "model.architecture.model_type", RANDOM_ARCHITECTURES)
    for name, value in architecture.items():
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise ConfigError(f"model.architecture.{name}", value, "allowed: an integer >= 1")


MODEL_FIX = ("re-download the model, or for the embedded model rebuild it with `python -m pipeline stage=pretrain` "
             "(or `git checkout models/checkpoints`)")


def check_model_files(folder: Path) -> None:
    """A local model's config parses and its weight files are whole (a hub id to be downloaded is not checked)."""
    if not (folder / "config.json").is_file():
        return
    read_json_object(folder / "config.json", MODEL_FIX)
    for weights in sorted(folder.glob("*.safetensors")):
        check_safetensors(weights, MODEL_FIX)


def check_task_split(cfg: DictConfig, split_setting: str, count_setting: str, task_setting: str = "task") -> None:
    split, count = OmegaConf.select(cfg, split_setting), OmegaConf.select(cfg, count_setting)
    one_of(split, split_setting, SPLITS)
    task = build_task(OmegaConf.select(cfg, task_setting), task_setting)
    task.check()
    if task.sizes_are_cheap:
        available = task.split_size(split)
        if not 1 <= count <= available:
            raise ConfigError(count_setting, count,
                              f"allowed: 1 to {available} (the distinct prompts of the {split} split)")
    elif count < 1:  # the upper bound is checked when the data loads
        raise ConfigError(count_setting, count, "allowed: an integer >= 1")


def check_features(features, setting: str) -> None:
    unknown = [f for f in features if f not in FEATURES]
    if unknown or not features:
        raise ConfigError(setting, list(features), f"allowed: a non-empty list of {', '.join(FEATURES)}")


def check_trajectories(cfg: DictConfig, multirun: bool) -> None:
    t = cfg.trajectories
    one_of(t.policy, "trajectories.policy", TRAJECTORY_POLICIES)
    check_task_split(cfg, "trajectories.split", "trajectories.num_prompts", "trajectories.task" if t.task else "task")
    DecodeSettings(gen_length=t.gen_length, block_length=t.block_length, steps=t.steps,
                   batch_size=t.batch_size).validate("trajectories")
    check_features(list(t.features), "trajectories.features")
    if not 1 <= t.num_shards <= t.num_prompts:
        raise ConfigError("trajectories.num_shards", t.num_shards,
                          f"allowed: 1 to trajectories.num_prompts ({t.num_prompts})")
    if t.shard is not None:
        if cfg.stage != "trajectories":
            raise ConfigError("trajectories.shard", t.shard,
                              "only with stage=trajectories (one array task per shard); drop it here")
        if not 0 <= t.shard < t.num_shards:
            raise ConfigError("trajectories.shard", t.shard, f"allowed: 0 to {t.num_shards - 1}")
    at_least(cfg, "trajectories.on_policy_rounds", 0, "an integer")


def check_train_filter(cfg: DictConfig, multirun: bool) -> None:
    tf, f = cfg.train_filter, cfg.filter
    check_features(list(f.features), "filter.features")
    missing = [x for x in f.features if x not in cfg.trajectories.features]
    if missing:
        raise ConfigError("filter.features", list(f.features),
                          f"{missing} not recorded; allowed: features in trajectories.features "
                          f"({list(cfg.trajectories.features)})")
    at_least(cfg, "filter.num_layers", 1)
    if f.hidden_size is not None:
        at_least(cfg, "filter.hidden_size", 1)
    one_of(f.architecture, "filter.architecture", ("mlp", "transformer"))  # models/filter.py ARCHITECTURES
    if f.architecture == "transformer":
        width = f.hidden_size or 32
        if f.num_heads < 1 or width % f.num_heads:
            raise ConfigError("filter.num_heads", f.num_heads, f"allowed: a divisor of the hidden size ({width})")
        if "position" not in f.features:
            raise ConfigError("filter.features", list(f.features), "a transformer filter learns where a position "
                                                                   "sits from the position feature; add position")
    if not tf.lr > 0:
        raise ConfigError("train_filter.lr", tf.lr, "allowed: a number > 0")
    at_least(cfg, "train_filter.weight_decay", 0, "a number")
    if tf.batch_size is not None:
        at_least(cfg, "train_filter.batch_size", 1)
    for name in ("max_epochs", "val_every_n_epochs", "checkpoint_every_n_epochs"):
        at_least(cfg, f"train_filter.{name}", 1)
    check_probability(tf.threshold, "train_filter.threshold")
    one_of(tf.loss_on, "train_filter.loss_on", LOSS_ON)
    if not tf.pos_weight > 0:
        raise ConfigError("train_filter.pos_weight", tf.pos_weight, "allowed: a number > 0")
    if tf.early_stopping_patience is not None:
        at_least(cfg, "train_filter.early_stopping_patience", 1, "an integer (or null: never stop early)")
    if tf.target_precision is not None:
        check_probability(tf.target_precision, "train_filter.target_precision")


def check_train_policy(cfg: DictConfig, multirun: bool) -> None:
    tp = cfg.train_policy
    check_train_filter(cfg, multirun)  # its warm start
    for name in ("updates", "prompts_per_update", "val_prompts", "val_every_n_updates", "checkpoint_every_n_updates"):
        at_least(cfg, f"train_policy.{name}", 1)
    at_least(cfg, "train_policy.group_size", 2)  # a group's mean is each rollout's baseline
    if tp.num_prompts < tp.prompts_per_update:
        raise ConfigError("train_policy.num_prompts", tp.num_prompts,
                          f"allowed: at least train_policy.prompts_per_update ({tp.prompts_per_update})")
    check_task_split(cfg, "train_policy.split", "train_policy.num_prompts")
    task = build_task(cfg.task)
    if task.sizes_are_cheap and tp.num_prompts + tp.val_prompts > task.split_size(tp.split):
        raise ConfigError("train_policy.val_prompts", tp.val_prompts,
                          f"allowed: 1 to {task.split_size(tp.split) - tp.num_prompts} (the {tp.split} split's "
                          f"prompts after train_policy.num_prompts)")
    if not tp.lr > 0:
        raise ConfigError("train_policy.lr", tp.lr, "allowed: a number > 0")
    at_least(cfg, "train_policy.kl_weight", 0, "a number")
    at_least(cfg, "train_policy.speed_weight", 0, "a number")
    if not tp.thresholds:
        raise ConfigError("train_policy.thresholds", [], "allowed: a non-empty list of numbers in (0, 1]")
    for threshold in tp.thresholds:
        check_probability(threshold, "train_policy.thresholds")
    if not SEED_RANGE[0] <= tp.seed <= SEED_RANGE[1]:
        raise ConfigError("train_policy.seed", tp.seed, f"allowed: {SEED_RANGE[0]} to {SEED_RANGE[1]}")


def check_tied_block_length(cfg: DictConfig, block_length: int) -> None:
    """An MLP filter reads blocks of its training length only (a transformer filter reads any)."""
    if cfg.filter.architecture == "mlp" and block_length != cfg.trajectories.block_length:
        raise ConfigError("trajectories.block_length", cfg.trajectories.block_length,
                          f"the filter is tied to its block length; allowed: the decoded block length "
                          f"({block_length})")


FILTER_FIX = "point decode.filter_path at a train_filter artifact's filter/ folder, or retrain the filter"
FILTER_FIELDS = {"block_length": int, "features": list}  # models/filter.py's FilterConfig, what loading needs


def check_filter_path(path: str | None, setting: str) -> None:
    if path is None:
        return
    folder = Path(path)
    if not (folder / "filter.json").is_file():
        raise ConfigError(setting, path, "no saved filter there; allowed: a train_filter artifact's filter/ folder "
                                         "(with filter.json and filter.safetensors)")
    saved = read_json_object(folder / "filter.json", FILTER_FIX)
    wrong = [name for name, kind in FILTER_FIELDS.items() if not isinstance(saved.get(name), kind)]
    if wrong:
        raise InputError(folder / "filter.json", f"not a saved filter's description (no valid {', '.join(wrong)})",
                         FILTER_FIX)
    if not (folder / "filter.safetensors").is_file():
        raise InputError(folder / "filter.safetensors", "missing", FILTER_FIX)
    check_safetensors(folder / "filter.safetensors", FILTER_FIX)


def check_sweep(cfg: DictConfig, multirun: bool) -> None:
    s = cfg.sweep
    check_task_split(cfg, "sweep.split", "sweep.num_prompts")
    at_least(cfg, "sweep.block_length", 1)
    if not s.gen_lengths:
        raise ConfigError("sweep.gen_lengths", [], "allowed: a non-empty list of generation lengths")
    if not s.grid and not multirun:
        raise ConfigError("sweep.grid", [], "allowed: a non-empty list of decode settings")
    if s.steps_per_block is not None and not 1 <= s.steps_per_block <= s.block_length:
        raise ConfigError("sweep.steps_per_block", s.steps_per_block,
                          f"allowed: 1 to sweep.block_length ({s.block_length}), or null (one token per step)")
    decode_settings(cfg).validate()  # the user's choice is checked even where the grid overrides it
    check_filter_path(cfg.decode.filter_path, "decode.filter_path")
    for setting in sweep_settings(cfg, multirun):
        check_filter_path(setting.filter_path, "decode.filter_path")
        if setting.learned and not setting.filter_path:
            check_tied_block_length(cfg, setting.block_length)
        if setting.policy == "filter" and setting.threshold is None and not setting.filter_path and \
                cfg.train_filter.target_precision is None:
            raise ConfigError("decode.threshold", None, "a filter's validated threshold needs "
                                                        "train_filter.target_precision; allowed: a number in (0, 1]")


def check_aggregate(cfg: DictConfig, multirun: bool) -> None:
    if not 0 <= cfg.aggregate.tolerance < 1:
        raise ConfigError("aggregate.tolerance", cfg.aggregate.tolerance, "allowed: a number in [0, 1)")


def check_benchmark(cfg: DictConfig, multirun: bool) -> None:
    check_sweep(cfg, multirun)  # the benchmark times the sweep's grid
    check_task_split(cfg, "benchmark.split", "benchmark.num_prompts")
    if cfg.benchmark.batch_size is not None:
        at_least(cfg, "benchmark.batch_size", 1)
    if not 0 <= cfg.benchmark.warmup <= cfg.benchmark.num_prompts:
        raise ConfigError("benchmark.warmup", cfg.benchmark.warmup,
                          f"allowed: 0 to benchmark.num_prompts ({cfg.benchmark.num_prompts})")


def check_evaluate(cfg: DictConfig, multirun: bool) -> None:
    settings = decode_settings(cfg).validate()
    check_task_split(cfg, "eval.split", "eval.num_prompts")
    if settings.learned and not settings.filter_path:
        raise ConfigError("decode.filter_path", None, f"decode={settings.policy} needs a saved filter (a "
                                                      "train_filter artifact's filter/ folder or a train_policy "
                                                      "artifact's policy/ folder)")
    check_filter_path(settings.filter_path, "decode.filter_path")


def check_score_references(cfg: DictConfig, multirun: bool) -> None:
    if cfg.references.num_prompts is None:
        one_of(cfg.references.split, "references.split", SPLITS)
        build_task(cfg.task).check()
    else:
        check_task_split(cfg, "references.split", "references.num_prompts")


def check_pretrain(cfg: DictConfig, multirun: bool) -> None:
    p = cfg.pretrain
    for name in ("batch_size", "max_steps", "val_every", "val_prompts", "checkpoint_every"):
        at_least(cfg, f"pretrain.{name}", 1)
    at_least(cfg, "pretrain.warmup_steps", 0)
    if not p.lr > 0:
        raise ConfigError("pretrain.lr", p.lr, "allowed: a number > 0")
    if len(p.windows) != len(p.window_weights) or not p.windows:
        raise ConfigError("pretrain.window_weights", list(p.window_weights),
                          f"allowed: one weight per window ({len(p.windows)})")
    if any(w < 0 for w in p.window_weights) or not sum(p.window_weights) > 0:
        raise ConfigError("pretrain.window_weights", list(p.window_weights), "allowed: weights >= 0, not all 0")
    if p.val_block_length < 1 or p.val_gen_length < 1 or p.val_gen_length % p.val_block_length:
        raise ConfigError("pretrain.val_block_length", p.val_block_length,
                          f"allowed: a positive divisor of pretrain.val_gen_length ({p.val_gen_length})")
    build_task(cfg.task)
    if p.init_from is not None:
        check_init_from(p.init_from, p.architecture)
    check_writable(Path(p.work_dir), "pretrain.work_dir")
    check_writable(Path(p.save_to), "pretrain.save_to")


def check_init_from(init_from: str, architecture: DictConfig) -> None:
    """A warm start copies every weight, so the saved model's shape must be the one about to be trained."""
    config_file = Path(init_from) / "config.json"
    if not config_file.is_file():
        raise ConfigError("pretrain.init_from", init_from, "no saved model there; allowed: a folder written by "
                                                           "stage=pretrain (config.json, model.safetensors) or null")
    saved = read_json_object(config_file, "point pretrain.init_from at a folder written by stage=pretrain")
    for name, value in architecture.items():
        if name in saved and saved[name] != value:
            raise ConfigError(f"pretrain.architecture.{name}", value,
                              f"pretrain.init_from={init_from} has {name}={saved[name]}; allowed: {saved[name]} "
                              "(a warm start keeps the saved model's architecture)")


CHECKS = {"trajectories": check_trajectories, "train_filter": check_train_filter,
          "train_policy": check_train_policy, "sweep": check_sweep,
          "aggregate": check_aggregate, "evaluate": check_evaluate, "score_references": check_score_references,
          "pretrain": check_pretrain, "benchmark": check_benchmark}
