"""What stages share: the artifact store, the lazily loaded model and task, and identities for artifact keys."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import re
import shutil
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from pipeline.artifacts.store import Artifact, ArtifactSpec, ArtifactStore, MissingArtifactError
from pipeline.modeling.device import resolve_device
from pipeline.modeling.loading import LoadedModel, load_model
from pipeline.tasks.base import Task
from pipeline.tasks.registry import build_task

# The code that decodes: part of the identity of every stage that runs the model (see artifacts.code_digest).
DECODING_CODE = (
    "models/attention.py", "models/diffusion_lm.py", "models/families.py", "models/llada.py", "models/dream.py",
    "models/checkpoint.py", "pipeline/modeling/loading.py", "pipeline/tasks/prompts.py",
    "pipeline/evaluation/setting.py", "pipeline/decoding/loop.py", "pipeline/decoding/step.py",
    "pipeline/decoding/policies.py", "pipeline/decoding/training_free.py", "pipeline/decoding/features.py",
    "pipeline/decoding/ranking.py", "pipeline/decoding/schedule.py", "pipeline/decoding/settings.py",
    "pipeline/decoding/eotp/base.py", "pipeline/decoding/eotp/committed.py", "pipeline/decoding/eotp/learn2pd.py",
    "pipeline/decoding/eotp/learn2pd_filled.py", "pipeline/tasks/base.py", "pipeline/tasks/arith.py",
    "pipeline/tasks/chain.py", "pipeline/tasks/registry.py", "pipeline/tasks/gsm8k.py",
    "pipeline/tasks/minerva_math.py", "pipeline/tasks/code.py", "pipeline/tasks/jsonl.py", "pipeline/tasks/hub.py",
    "pipeline/tasks/sandbox.py",
)
HASHED_WEIGHTS_LIMIT = 256 * 2**20  # hash weight files up to this size; larger (hub) models are named by path


# Lightning's messages that tell our users nothing: hardware it did not use, adverts, the expected end of training,
# and hints about its own set-up that the pipeline has already weighed (regexes matched at a message's start).
LIGHTNING_CHATTER = (
    r"GPU available: ", r"TPU available: ", r"HPU available: ", r"💡 Tip: ", r"`Trainer\.fit` stopped: `max_",
    r"Seed set to ", r"LOCAL_RANK: ", r"You are using a CUDA device .* that has Tensor Cores",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"The '\w+' does not have many workers",
    r"The `srun` command is available on your system but is not used",
    r"Checkpoint directory .* exists and is not empty",
    r"Experiment logs directory .* exists and is not empty",  # a resumed run keeps the history (progress.py)
    r"You're resuming from a checkpoint that ended before the epoch ended",  # policy updates draw by their number
    r"\s*Detected KeyboardInterrupt, attempting graceful shutdown",  # the command line says "interrupted: ..."
)
# where Lightning logs them (its warnings go through the warnings module)
LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                     "lightning.fabric.utilities.seed", "lightning.pytorch.accelerators.cuda")
_CHATTER = re.compile("|".join(LIGHTNING_CHATTER))


def _not_chatter(record: logging.LogRecord) -> bool:
    return _CHATTER.match(record.getMessage()) is None


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's progress bars and tables go to stderr (stdout carries results only), its log lines print once
    (``lightning/__init__.py`` adds a console handler of its own beside the root logger's), and its chatter
    (``LIGHTNING_CHATTER``), repeated in every run, not at all; its real warnings still show."""
    if logging.getLogger().hasHandlers():
        logging.getLogger("lightning").handlers.clear()
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    for logger in loggers:
        logger.addFilter(_not_chatter)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            for pattern in LIGHTNING_CHATTER:
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        for logger in loggers:
            logger.removeFilter(_not_chatter)


@contextlib.contextmanager
def cleared_if_diverged(work: Path) -> Iterator[None]:
    """Training that diverges leaves nothing in its artifact's work folder: no rerun could resume from it, since
    lowering a setting the error names gives the artifact another key (so another work folder), and the same
    settings would diverge again at the same step."""
    from pipeline.runtime.progress import TrainingDiverged

    try:
        yield
    except TrainingDiverged:
        shutil.rmtree(work, ignore_errors=True)
        raise


@functools.lru_cache(maxsize=8)
def _weights_digest(path: str) -> str:
    files = sorted(Path(path).glob("*.safetensors"))
    total = sum(f.stat().st_size for f in files)
    digest = hashlib.sha256()
    for f in files:
        if total <= HASHED_WEIGHTS_LIMIT:
            digest.update(f.read_bytes())
        else:
            digest.update(f"{f.name}:{f.stat().st_size}".encode())
    return digest.hexdigest()[:16]


def model_identity(model_cfg: DictConfig) -> dict[str, Any]:
    """What identifies the model in artifact keys: its name and a digest of its weights (random weights: the
    architecture they were drawn for; always from the same seed)."""
    weights = {"random": plain(model_cfg.architecture)} if model_cfg.get("random_weights") else \
        _weights_digest(str(model_cfg.path))
    identity = {"name": model_cfg.name, "weights": weights, "dtype": model_cfg.dtype}
    if model_cfg.family != "embedded":  # native and remote code may round differently
        identity["implementation"] = model_cfg.implementation
    return identity


def plain(cfg: DictConfig | dict | None) -> dict[str, Any]:
    if cfg is None:
        return {}
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


@dataclass
class StageContext:
    """One invocation's view: config, store, and the model/task loaded once and shared by all stages."""


    cfg: DictConfig
    store: ArtifactStore = field(init=False)
    _loaded: LoadedModel | None = field(default=None, init=False)
    _task: Task | None = field(default=None, init=False)
    fresh: set[str] = field(default_factory=set, init=False)  # artifact keys computed by this invocation
    made: dict[str, Artifact] = field(default_factory=dict, init=False)  # artifacts this process made or reused

    def __post_init__(self) -> None:
        self.store = ArtifactStore(self.cfg.output_dir, verify=self.cfg.verify_artifacts)

    @property
    def device(self) -> torch.device:
        return resolve_device(self.cfg.device)

    @property
    def loaded(self) -> LoadedModel:
        if self._loaded is None:
            self._loaded = load_model(self.cfg.model, self.device)
        return self._loaded

    @property
    def task(self) -> Task:
        if self._task is None:
            self._task = build_task(self.cfg.task)
        return self._task

    def labels(self) -> dict[str, Any]:
        return {"experiment": self.cfg.experiment_name}

    def forced(self, stage: str) -> bool:
        """``force=true`` recomputes the stages this invocation was asked to run, never silently upstream ones."""
        return bool(self.cfg.force) and self.cfg.stage in (stage, "all")

    def reuse_only(self, stage: str) -> bool:
        """``reuse_only=true`` forbids computing the artifacts of stages this command was not asked to run."""
        return bool(self.cfg.reuse_only) and self.cfg.stage not in (stage, "all")

    def upstream(self, spec: ArtifactSpec) -> Artifact:
        """An upstream stage's artifact, as the plan's executor left it: made or reused by an earlier node of this
        process, else complete in the store (a cluster job's upstream ran in a job of its own, and under
        ``reuse_only`` upstream nodes are read, never run)."""
        if spec.key in self.made:
            return self.made[spec.key]
        found = self.store.check_upstream(spec, bool(self.cfg.reuse_only))  # names what reuse_only forbids
        if found is None:
            path = self.store.path(spec)
            raise MissingArtifactError(path, f"the {spec.stage} artifact this stage reads is not complete",
                                       f"run `stage={spec.stage}` first")
        return found

