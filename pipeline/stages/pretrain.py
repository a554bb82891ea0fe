"""Stage ``pretrain``: train the embedded masked-diffusion model and save it with ``save_pretrained``.

Checkpoints go to ``pretrain.work_dir`` every ``checkpoint_every`` steps; a rerun resumes from the last one.
Every ``val_every`` steps a vanilla decode of validation prompts reports exact match. Training that diverges stops
in one line naming ``pretrain.lr`` and keeps the last checkpoint, saved before the divergence, to resume from at a
lower rate (:func:`diverged`).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from models.tokenizer import build_char_tokenizer
from pipeline.modeling.device import resolve_device
from pipeline.runtime.progress import TrainingDiverged, bar_wanted
from pipeline.stages.context import StageContext, quiet_lightning
from pipeline.tasks.prompts import PretrainStream
from pipeline.tasks.registry import build_task

log = logging.getLogger(__name__)


def run(ctx: StageContext, items: list[int] | None = None) -> Path:
    with quiet_lightning():
        return pretrain(ctx.cfg)


def pretrain(cfg: DictConfig) -> Path:
    import lightning as L  # here, not above: a command that trains nothing never imports Lightning

    from pipeline.learning.pretrain import DecodeAccuracy, DiffusionPretraining
    from pipeline.runtime.training import FiniteTraining, interruptible_fit

    pcfg = cfg.pretrain
    device = resolve_device(cfg.device)
    L.seed_everything(cfg.seed, workers=True)
    task = build_task(cfg.task)
    tokenizer = build_char_tokenizer()
    architecture = OmegaConf.to_container(pcfg.architecture, resolve=True)
    model_config = dict(architecture, vocab_size=len(tokenizer), mask_token_id=tokenizer.mask_token_id,
                        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    module = DiffusionPretraining(model_config, lr=pcfg.lr, weight_decay=pcfg.weight_decay,
                                  warmup_steps=pcfg.warmup_steps, max_steps=pcfg.max_steps)
    if pcfg.init_from:  # continued pretraining: start from another embedded model's weights (same architecture)
        from models import DiffusionLM

        module.model.load_state_dict(DiffusionLM.from_pretrained(pcfg.init_from).state_dict())
        log.info("starting from the weights of %s", pcfg.init_from)
    log.info("pretraining a %.2fM-parameter model", sum(p.numel() for p in module.parameters()) / 1e6)
    stream = PretrainStream(task, tokenizer, pcfg.batch_size, pcfg.windows, pcfg.window_weights, cfg.seed)
    loader = torch.utils.data.DataLoader(stream, batch_size=None)
    work_dir = Path(pcfg.work_dir)
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=work_dir / "checkpoints", save_last=True, every_n_train_steps=pcfg.checkpoint_every, save_top_k=0
    )
    logger = L.pytorch.loggers.CSVLogger(work_dir, name="logs")
    trainer = L.Trainer(
        max_steps=pcfg.max_steps,
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision="bf16-mixed" if device.type == "cuda" else "32-true",
        callbacks=[FiniteTraining("pretrain", "step", {"pretrain.lr": pcfg.lr}), checkpoints,
                   DecodeAccuracy(task, tokenizer, pcfg.val_every, pcfg.val_prompts, pcfg.val_gen_length,
                                  pcfg.val_block_length)],
        logger=logger,
        default_root_dir=work_dir,
        log_every_n_steps=25,
        enable_progress_bar=bar_wanted(bool(cfg.progress)),
        enable_model_summary=False,  # the parameter count is logged; the table would repeat in every job log
        gradient_clip_val=1.0,
    )
    last = work_dir / "checkpoints" / "last.ckpt"
    if last.exists():
        log.info("resuming from %s", last)
    try:
        interruptible_fit(trainer, module, loader, ckpt_path=str(last) if last.exists() else None)
    except TrainingDiverged as error:
        raise diverged(error, Path(logger.log_dir), last) from None
    save_to = Path(pcfg.save_to)
    tmp = save_to.with_name(save_to.name + ".tmp")
    module.model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if save_to.exists():
        shutil.rmtree(save_to)
    tmp.rename(save_to)
    log.info("saved the model and tokenizer to %s", save_to)
    return save_to


def diverged(error: TrainingDiverged, run_log: Path, last: Path) -> TrainingDiverged:
    """What diverged pretraining leaves, and the line that says so. The work folder belongs to the model, not to
    the settings, and a rerun resumes from its last checkpoint at the rate it is given (the module's
    ``on_load_checkpoint``), so that checkpoint stays: no step that diverged was taken before it was saved. One
    whose own first step diverged cannot be resumed at any rate (the loss and gradient do not depend on it) and is
    deleted. This run's log folder goes: nothing resumes from it."""
    shutil.rmtree(run_log, ignore_errors=True)
    if last.exists() and error.step == error.first > 0:
        last.unlink()
        then = f"; the checkpoint it resumed from ({last}) diverges at its first step, so it was deleted: a rerun " \
               "starts over"
    elif last.exists():
        then = f" and rerun: it resumes from the last checkpoint, saved before the divergence ({last}; delete it " \
               "to start over)"
    else:
        then = " and rerun"
    return TrainingDiverged(f"{error}{then}", error.step, error.first)
