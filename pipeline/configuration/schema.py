"""The typed schema of every config group, registered with Hydra's ConfigStore.

``conf/config.yaml`` starts from ``schema`` (the root :class:`Config`), so Hydra itself checks every value's type
and rejects unknown keys while composing, before the app starts: ``decode.eotp=maybe`` or ``sweep.grid`` entries
with a misspelt key fail there. Ranges and cross-field rules are checked next by
:mod:`pipeline.configuration.validation`. Values and their comments live in the YAML files; the defaults here only
fill what an option may omit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from pipeline.decoding.settings import DecodeSettings


@dataclass
class ModelConfig:
    name: str = MISSING
    family: str = "embedded"  # embedded | llada | dream: how the model is called and read (models/families.py)
    implementation: str = "native"  # llada, dream: native (models/llada.py, models/dream.py) | remote (hub code)
    path: str | None = MISSING  # a local directory, or a hub id found in the local hub cache; null: random_weights
    allow_download: bool = False
    dtype: str = "auto"
    trust_remote_code: bool = False
    mask_token_id: int | None = None
    eos_token_id: int | None = None
    end_of_turn_ids: list[int] = field(default_factory=list)  # also end the text (EoTP, answer cutting)
    random_weights: bool = False  # build `architecture` with seeded random weights instead of reading a checkpoint
    architecture: dict[str, Any] | None = None  # random_weights: the official config.json's fields


@dataclass
class FilterConfig:
    num_layers: int = 2
    hidden_size: int | None = None
    features: list[str] = field(default_factory=lambda: ["confidence"])
    architecture: str = "mlp"  # mlp (Learn2PD's, tied to its block length) | transformer (any block length)
    num_heads: int = 4  # transformer only


@dataclass
class LoggerConfig:
    kind: str = "none"
    project: str = "learn2pd"
    mode: str = "offline"
    dir: str = "${output_dir}"


@dataclass
class ArchitectureConfig:
    hidden_size: int = MISSING
    num_hidden_layers: int = MISSING
    num_attention_heads: int = MISSING
    intermediate_size: int = MISSING
    max_position_embeddings: int = MISSING


@dataclass
class PretrainConfig:
    architecture: ArchitectureConfig = field(default_factory=ArchitectureConfig)
    batch_size: int = MISSING
    windows: list[int] = MISSING
    window_weights: list[float] = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    warmup_steps: int = MISSING
    max_steps: int = MISSING
    val_every: int = MISSING
    val_prompts: int = MISSING
    val_gen_length: int = MISSING
    val_block_length: int = MISSING
    checkpoint_every: int = MISSING
    work_dir: str = MISSING
    save_to: str = MISSING
    init_from: str | None = None


@dataclass
class TrajectoriesConfig:
    task: Any = None  # None: the experiment's task; else a task config of its own (task@trajectories.task=NAME)
    policy: str = MISSING
    split: str = MISSING
    num_prompts: int = MISSING
    gen_length: int = MISSING
    block_length: int = MISSING
    steps: int | None = None
    batch_size: int = MISSING
    features: list[str] = MISSING
    num_shards: int = 1
    shard: int | None = None
    on_policy_rounds: int = 0


@dataclass
class TrainFilterConfig:
    lr: float = MISSING
    weight_decay: float = MISSING
    batch_size: int | None = None
    max_epochs: int = MISSING
    val_every_n_epochs: int = MISSING
    checkpoint_every_n_epochs: int = MISSING
    threshold: float = MISSING
    loss_on: str = MISSING
    pos_weight: float = MISSING
    class_balance: bool = False
    early_stopping_patience: int | None = None
    target_precision: float | None = None


@dataclass
class TrainPolicyConfig:
    split: str = MISSING
    num_prompts: int = MISSING
    val_prompts: int = MISSING
    updates: int = MISSING
    prompts_per_update: int = MISSING
    group_size: int = MISSING
    center: bool = True
    lr: float = MISSING
    kl_weight: float = MISSING
    speed_weights: list[float] = MISSING  # [low, high]: each prompt group's speed weight is drawn in between
    reward: str = "bonus"  # bonus | cost (pipeline.learning.policy.rewards)
    speed_draw: str = "uniform"  # uniform | log_uniform (pipeline.learning.policy.SpeedSchedule)
    normalize_advantage: bool = False
    eotp: bool = False
    knob: list[float] = MISSING  # speeds validated on held-out prompts after training
    seed: int = 0
    val_every_n_updates: int = MISSING
    checkpoint_every_n_updates: int = MISSING


@dataclass
class GridEntry:
    """One ``sweep.grid`` entry: decode settings, a list meaning one setting per value (lists multiply out).

    Unset fields (None) come from ``decode``; each expanded setting is then type-checked as a
    :class:`DecodeSettings` by :mod:`pipeline.configuration.validation`.
    """

    policy: Any = None
    gen_length: Any = None
    block_length: Any = None
    steps: Any = None
    temperature: Any = None
    remasking: Any = None
    schedule: Any = None
    eotp: Any = None
    eotp_rule: Any = None
    batch_size: Any = None
    seed: Any = None
    cache: Any = None
    threshold: Any = None
    factor: Any = None
    factor_rule: Any = None
    filter_path: Any = None
    gamma: Any = None
    kl_bound: Any = None
    relaxed_threshold: Any = None
    radius: Any = None
    credit_alpha: Any = None
    credit_gamma: Any = None
    credit_beta: Any = None
    speed: Any = None


@dataclass
class SweepConfig:
    split: str = MISSING
    num_prompts: int = MISSING
    block_length: int = MISSING
    gen_lengths: list[int] = MISSING
    grid: list[GridEntry] = MISSING
    steps_per_block: int | None = None  # null: one token per step
    num_shards: int = 1  # each setting's prompts in this many contiguous, separately resumable shards


@dataclass
class AggregateConfig:
    tolerance: float = MISSING


@dataclass
class BenchmarkConfig:
    split: str = MISSING
    num_prompts: int = MISSING
    warmup: int = MISSING
    batch_size: int | None = MISSING  # null: no batched throughput run
    reference: bool = False


@dataclass
class EvalConfig:
    split: str = MISSING
    num_prompts: int = MISSING


@dataclass
class ReferencesConfig:
    split: str = MISSING
    num_prompts: int | None = None


@dataclass
class LauncherConfig:
    kind: str = "local"  # local | slurm (conf/launcher/*.yaml documents every setting)
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: int = 240
    gpus_per_node: int | None = None
    cpus_per_task: int = 1
    mem_gb: int = 8
    array_parallelism: int = 16
    setup: list[str] = field(default_factory=list)
    folder: str = "${output_dir}/slurm/${experiment_name}"
    max_requeues: int = 3
    signal_delay_s: int = 90
    sweep_tasks: int | None = None
    additional: dict[str, Any] = field(default_factory=dict)
    wait: bool = False
    poll_s: float = 10.0


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: Any = MISSING  # each task's schema comes from its constructor (pipeline/tasks/registry.py)
    decode: DecodeSettings = field(default_factory=DecodeSettings)
    filter: FilterConfig = field(default_factory=FilterConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    stage: str = MISSING
    experiment_name: str = MISSING
    force: bool = False
    reuse_only: bool = False
    verify_artifacts: str = "content"  # content | size: what reuse checks of an artifact's files
    device: str = "cpu"
    threads: int | None = None
    seed: int = 0
    progress: bool = True
    output_dir: str = MISSING
    trajectories: TrajectoriesConfig = field(default_factory=TrajectoriesConfig)
    train_filter: TrainFilterConfig = field(default_factory=TrainFilterConfig)
    train_policy: TrainPolicyConfig = field(default_factory=TrainPolicyConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    aggregate: AggregateConfig = field(default_factory=AggregateConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    references: ReferencesConfig = field(default_factory=ReferencesConfig)


def register_schemas() -> None:
    """Store the root schema as ``schema``; ``conf/config.yaml`` lists it first in its defaults."""
    ConfigStore.instance().store(name="schema", node=Config)
