"""Stage ``train_filter``: fit the Learn2PD filter on a trajectories artifact with Lightning.

Writes the filter (``filter/``, loadable by ``decode.filter_path``), Lightning checkpoints (a killed run resumes
from ``checkpoints/last.ckpt`` inside the artifact's work directory, keeping the history in ``logs/``) and the
validation and test metrics. Training that diverges stops in one line naming ``train_filter.lr`` and leaves no work
directory (:func:`pipeline.stages.context.cleared_if_diverged`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch

from pipeline.artifacts.store import Artifact, ArtifactSpec, code_digest
from pipeline.runtime import preemption
from pipeline.runtime.progress import bar_wanted, step_row
from pipeline.runtime.tracking import tracking
from pipeline.stages import trajectories
from pipeline.stages.context import StageContext, cleared_if_diverged, plain, quiet_lightning

log = logging.getLogger(__name__)
CODE = ("pipeline/stages/train_filter.py", "pipeline/learning/filter.py", "models/filter.py",
        "pipeline/learning/trajectories.py")
SPEED_ONLY = ("val_every_n_epochs", "checkpoint_every_n_epochs")  # when to look and save, not what is learned


def spec(ctx: StageContext, round_: int | None = None) -> ArtifactSpec:
    """The filter trained on the oracle's trajectories and on-policy rounds 1..``round_`` (default: all of them)."""
    rounds = ctx.cfg.trajectories.on_policy_rounds if round_ is None else round_
    train = {k: v for k, v in plain(ctx.cfg.train_filter).items() if k not in SPEED_ONLY}
    settings = {"filter": plain(ctx.cfg.filter), "train": train, "seed": ctx.cfg.seed}
    if rounds:
        settings["on_policy_rounds"] = rounds
    inputs = {name: s.key for name, s in trajectory_specs(ctx, rounds).items()}
    return ArtifactSpec("train_filter", code_digest(CODE), settings, inputs, ctx.labels())


def trajectory_specs(ctx: StageContext, rounds: int) -> dict[str, ArtifactSpec]:
    """The trajectories a filter of ``rounds`` on-policy rounds learns from: the oracle's, then each round's,
    decoded with the filter of the round before."""
    specs = {"trajectories": trajectories.spec(ctx)}
    for r in range(1, rounds + 1):
        specs[f"trajectories_round{r}"] = trajectories.spec(ctx, r, spec(ctx, r - 1).key)
    return specs


def run(ctx: StageContext, items: list[int] | None = None) -> Artifact:
    """The trained filter, retrained when forced or when its trajectories changed since it was trained.

    With ``trajectories.on_policy_rounds=R`` (DAgger) the filter of round r-1 decodes the training prompts, the
    states it visits are labelled against the reference outputs and added, and the filter is retrained; the
    filter returned is round R's. Every round is an artifact of its own, so an interrupted run resumes; the rounds
    are this stage's own work, driven here, while the oracle's trajectories come from the plan's upstream node.
    """
    return trained(ctx, ctx.cfg.trajectories.on_policy_rounds, ctx.reuse_only("train_filter"))


def trained(ctx: StageContext, rounds: int, reuse_only: bool) -> Artifact:
    """The filter of ``rounds`` on-policy rounds (``reuse_only``: refuse to compute it)."""
    s = spec(ctx, rounds)
    existing = ctx.store.check_upstream(s, reuse_only)
    if existing is not None and not ctx.forced("train_filter"):
        recorded = {name: ctx.store.load(t) for name, t in trajectory_specs(ctx, rounds).items()}
        if ctx.store.is_current(existing, recorded):
            log.info("train_filter %s: complete, reusing %s (nothing to compute)", s.key, existing.path)
            return existing
    base = ctx.upstream(trajectories.spec(ctx))
    sources = {"trajectories": base}
    for r in range(1, rounds + 1):
        previous = trained(ctx, r - 1, bool(ctx.cfg.reuse_only))
        log.info("train_filter: on-policy round %d of %d: decoding the training prompts with %s", r, rounds,
                 previous.key)
        sources[f"trajectories_round{r}"] = trajectories.produce(ctx, trajectories.Round(r, previous, base),
                                                                 bool(ctx.cfg.reuse_only))
    with tracking(ctx.cfg, "train_filter", s.key) as tracker, quiet_lightning():
        artifact = ctx.store.materialize(s, lambda work: fit(ctx, list(sources.values()), work, tracker),
                                         force=True, inputs=sources)
        tracker.summary(artifact.figures)
    return artifact


def fit(ctx: StageContext, sources: list[Artifact], work: Path, tracker) -> dict:
    # Lightning is imported here, not above: a command that trains nothing never pays its import
    import lightning as L
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from pipeline.learning.filter import (
        FilterModule,
        TrajectoryDataModule,
        choose_threshold,
        masked_predictions,
        metrics_at,
    )
    from pipeline.runtime.training import (
        EpochLog,
        EpochSnapshot,
        FiniteTraining,
        StepRow,
        history_logger,
        interruptible_fit,
    )

    cfg, tf = ctx.cfg, ctx.cfg.train_filter
    L.seed_everything(cfg.seed, workers=True)
    recorded = sources[0].manifest["settings"]["features"]
    block_length = sources[0].manifest["settings"]["block_length"]
    data = TrajectoryDataModule([a.path / "shards" for a in sources], recorded, list(cfg.filter.features),
                                tf.batch_size, cfg.seed)
    data.setup()
    pos_weight = tf.pos_weight * (data.balanced_pos_weight(tf.loss_on) if tf.class_balance else 1.0)
    log.info("train_filter: %s rows per split from %d trajectory round(s); positive weight %.4g", data.sizes(),
             len(sources), pos_weight)
    filter_config = dict(block_length=block_length, features=list(cfg.filter.features),
                         num_layers=cfg.filter.num_layers, hidden_size=cfg.filter.hidden_size,
                         architecture=cfg.filter.architecture, num_heads=cfg.filter.num_heads)
    module = FilterModule(filter_config, lr=tf.lr, weight_decay=tf.weight_decay, threshold=tf.threshold,
                          loss_on=tf.loss_on, pos_weight=pos_weight)
    # One rolling checkpoint, last.ckpt, every checkpoint_every_n_epochs (Lightning's save_last alone writes
    # nothing until a top-k checkpoint is saved, so a killed run had nothing to resume from).
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=work / "checkpoints", filename="last", save_top_k=1, every_n_epochs=tf.checkpoint_every_n_epochs,
        save_on_train_epoch_end=True, enable_version_counter=False,
    )
    callbacks: list[L.Callback] = [FiniteTraining("train_filter", "epoch", {"train_filter.lr": tf.lr}), StepRow(),
                                   checkpoints]
    best = None
    if tf.early_stopping_patience is not None:  # stop when val/loss stops falling; keep the best epoch's weights
        best = L.pytorch.callbacks.ModelCheckpoint(dirpath=work / "checkpoints", filename="best", monitor="val/loss",
                                                   mode="min", save_top_k=1, enable_version_counter=False)
        callbacks += [best, L.pytorch.callbacks.EarlyStopping(monitor="val/loss", mode="min",
                                                              patience=tf.early_stopping_patience)]
    plugins = []
    snapshot = EpochSnapshot(work / "checkpoints" / "last.ckpt")
    if preemption.in_slurm_job():
        # The job wrapper owns the preemption signal and asks the snapshot to save; Lightning's own SLURM requeue
        # handler stays off, so exactly one side acts on it.
        plugins.append(SLURMEnvironment(auto_requeue=False))
        callbacks.append(snapshot)
    bar = bar_wanted(bool(cfg.progress))
    if not bar:
        callbacks.append(EpochLog("train_filter", tf.max_epochs))
    last, first_step = resumable(work / "checkpoints" / "last.ckpt")
    loggers = [history_logger(work, first_step, step_row(last))]
    if tracker.run is not None:
        loggers.append(L.pytorch.loggers.WandbLogger(experiment=tracker.run))
    trainer = L.Trainer(
        max_epochs=tf.max_epochs, accelerator="gpu" if ctx.device.type == "cuda" else "cpu", devices=1,
        callbacks=callbacks, logger=loggers, enable_progress_bar=bar,
        check_val_every_n_epoch=tf.val_every_n_epochs, log_every_n_steps=1, default_root_dir=work,
        enable_model_summary=False, plugins=plugins,
    )
    with preemption.saver(snapshot.save), cleared_if_diverged(work):
        interruptible_fit(trainer, module, datamodule=data, ckpt_path=str(last) if last else None)
    stopped = trainer.current_epoch
    if best is not None and best.best_model_path:
        module.load_state_dict(torch.load(best.best_model_path, map_location=module.device,
                                          weights_only=False)["state_dict"])
    validation = {k: float(v) for k, v in trainer.validate(module, datamodule=data, verbose=False)[0].items()}
    test = {k: float(v) for k, v in trainer.test(module, datamodule=data, verbose=False)[0].items()}
    figures = {**validation, **test, "parameters": sum(p.numel() for p in module.network.parameters()),
               "epochs": stopped, "pos_weight": pos_weight, "rounds": len(sources),
               **{f"rows_{k}": v for k, v in data.sizes().items()}}
    network = module.network.cpu().eval()
    if tf.target_precision is not None:  # the decode threshold, chosen on validation and stored with the filter
        chosen = choose_threshold(*masked_predictions(network, data.splits["val"]), tf.target_precision)
        at_test = metrics_at(*masked_predictions(network, data.splits["test"]), chosen["threshold"])
        network.config = dataclasses.replace(network.config, threshold=chosen["threshold"])
        figures.update({f"validated/{k}": v for k, v in chosen.items()})
        figures.update({f"validated/test_{k}": v for k, v in at_test.items()})
        if chosen["recall"] == 0.0:
            log.warning("train_filter: no threshold reaches precision %.3g on validation; the stored threshold "
                        "1.0 accepts nothing", tf.target_precision)
    network.save(work / "filter")
    (work / "metrics.json").write_text(json.dumps(figures, indent=2))
    log.info("train_filter: %s", {k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()})
    return figures


def resumable(checkpoint: Path, stage: str = "train_filter", unit: str = "epoch") -> tuple[Path | None, int]:
    """The checkpoint a killed run left, if it loads (a kill while it was being written leaves it truncated), and
    the global step it was saved at (0 without one). The log line counts in ``unit``: epochs, or steps."""
    if not checkpoint.exists():
        return None, 0
    try:
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
        epoch, step = int(saved["epoch"]), int(saved["global_step"])
    except Exception as error:  # a partial write: unpickling fails in many ways
        log.warning("%s: ignoring the unreadable checkpoint %s (%s)", stage, checkpoint, error)
        checkpoint.unlink()
        return None, 0
    log.info("%s: resuming from %s (after %s %d)", stage, checkpoint, unit, epoch if unit == "epoch" else step)
    return checkpoint, step
