"""Stage ``train_filter``: fit the Learn2PD filter on a trajectories artifact with Lightning.

Writes the filter (``filter/``, loadable by ``decode.filter_path``), Lightning checkpoints (a killed run resumes
from ``checkpoints/last.ckpt`` inside the artifact's work directory) and the validation and test metrics.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
from omegaconf import DictConfig

from pipeline.artifacts import Artifact, ArtifactSpec, code_digest
from pipeline.errors import InputError
from pipeline.stages import trajectories
from pipeline.stages.common import StageContext, plain, quiet_lightning
from pipeline.tracking import tracking

log = logging.getLogger(__name__)
CODE = ("pipeline/stages/train_filter.py", "pipeline/filter_training.py", "models/filter.py",
        "pipeline/trajectory_data.py")
SPEED_ONLY = ("val_every_n_epochs", "checkpoint_every_n_epochs")  # when to look and save, not what is learned


def spec(ctx: StageContext) -> ArtifactSpec:
    train = {k: v for k, v in plain(ctx.cfg.train_filter).items() if k not in SPEED_ONLY}
    settings = {"filter": plain(ctx.cfg.filter), "train": train, "seed": ctx.cfg.seed}
    return ArtifactSpec("train_filter", code_digest(CODE), settings, {"trajectories": trajectories.spec(ctx).key},
                        ctx.labels())


def ensure(ctx: StageContext, upstream: bool = False) -> Artifact:
    """The trained filter, retrained when forced or when its trajectories changed since it was trained."""
    s = spec(ctx)
    existing = ctx.store.check_upstream(s, upstream and bool(ctx.cfg.reuse_only))
    recorded = ctx.store.load(trajectories.spec(ctx))
    if existing is not None and not ctx.forced("train_filter") and \
            ctx.store.is_current(existing, {"trajectories": recorded}):
        log.info("train_filter %s: complete, reusing %s (nothing to compute)", s.key, existing.path)
        return existing
    source = trajectories.ensure(ctx, upstream=True)
    if source is None:
        raise InputError(ctx.store.path(trajectories.spec(ctx)), "trajectories are incomplete (shards missing)",
                         "run the missing trajectories.shard array tasks before train_filter")
    with tracking(ctx.cfg, "train_filter", s.key) as tracker, quiet_lightning():
        artifact = ctx.store.materialize(s, lambda work: fit(ctx, source, work, tracker), force=True,
                                         inputs={"trajectories": source})
        tracker.summary(artifact.figures)
    return artifact


def fit(ctx: StageContext, source: Artifact, work: Path, tracker) -> dict:
    from pipeline.filter_training import FilterModule, TrajectoryDataModule

    cfg, tf = ctx.cfg, ctx.cfg.train_filter
    L.seed_everything(cfg.seed, workers=True)
    recorded = source.manifest["settings"]["features"]
    block_length = source.manifest["settings"]["block_length"]
    data = TrajectoryDataModule(source.path / "shards", recorded, list(cfg.filter.features), tf.batch_size, cfg.seed)
    data.setup()
    log.info("train_filter: %s rows per split", data.sizes())
    filter_config = dict(block_length=block_length, features=list(cfg.filter.features),
                         num_layers=cfg.filter.num_layers, hidden_size=cfg.filter.hidden_size)
    module = FilterModule(filter_config, lr=tf.lr, weight_decay=tf.weight_decay, threshold=tf.threshold,
                          loss_on=tf.loss_on, pos_weight=tf.pos_weight)
    # One rolling checkpoint, last.ckpt, every checkpoint_every_n_epochs (Lightning's save_last alone writes
    # nothing until a top-k checkpoint is saved, so a killed run had nothing to resume from).
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=work / "checkpoints", filename="last", save_top_k=1, every_n_epochs=tf.checkpoint_every_n_epochs,
        save_on_train_epoch_end=True, enable_version_counter=False,
    )
    loggers = [L.pytorch.loggers.CSVLogger(work, name="logs", version=0)]
    if tracker.run is not None:
        loggers.append(L.pytorch.loggers.WandbLogger(experiment=tracker.run))
    trainer = L.Trainer(
        max_epochs=tf.max_epochs, accelerator="gpu" if ctx.device.type == "cuda" else "cpu", devices=1,
        callbacks=[checkpoints], logger=loggers, enable_progress_bar=bool(cfg.progress),
        check_val_every_n_epoch=tf.val_every_n_epochs, log_every_n_steps=1, default_root_dir=work,
        enable_model_summary=False,
    )
    last = resumable(work / "checkpoints" / "last.ckpt")
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if last else None)
    validation = {k: float(v) for k, v in trainer.validate(module, datamodule=data, verbose=False)[0].items()}
    test = {k: float(v) for k, v in trainer.test(module, datamodule=data, verbose=False)[0].items()}
    module.network.save(work / "filter")
    figures = {**validation, **test, "parameters": sum(p.numel() for p in module.network.parameters()),
               **{f"rows_{k}": v for k, v in data.sizes().items()}}
    (work / "metrics.json").write_text(json.dumps(figures, indent=2))
    log.info("train_filter: %s", {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()})
    return figures


def resumable(checkpoint: Path) -> Path | None:
    """The checkpoint a killed run left, if it loads (a kill while it was being written leaves it truncated)."""
    import torch

    if not checkpoint.exists():
        return None
    try:
        epoch = torch.load(checkpoint, map_location="cpu", weights_only=False)["epoch"]
    except Exception as error:  # a partial write: unpickling fails in many ways
        log.warning("train_filter: ignoring the unreadable checkpoint %s (%s)", checkpoint, error)
        checkpoint.unlink()
        return None
    log.info("train_filter: resuming from %s (after epoch %d)", checkpoint, epoch)
    return checkpoint


def run(cfg: DictConfig, ctx: StageContext | None = None) -> Artifact:
    return ensure(ctx or StageContext(cfg))
