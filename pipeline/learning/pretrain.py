"""Pretraining the embedded model with the masked-diffusion objective in its instruction-tuning form.

For each sequence draw t ~ U(0, 1) (stratified over the batch), mask each answer-window token with probability
p = (1 - eps) t + eps, and take cross-entropy on masked positions weighted by 1 / p, normalised by
batch x window. Prompts are never masked; answers are padded with end-of-text up to the window, so the model
learns where text ends.
"""

from __future__ import annotations

import logging
import math

import lightning as L
import torch
import torch.nn.functional as F

from models import DiffusionLM, DiffusionLMConfig
from pipeline.decoding.loop import decode
from pipeline.decoding.policies import Vanilla
from pipeline.decoding.settings import DecodeSettings
from pipeline.tasks.prompts import decode_answer, encode_prompt

log = logging.getLogger(__name__)


def masked_diffusion_loss(model, batch: dict[str, torch.Tensor], mask_id: int, eps: float = 1e-3,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    ids, region = batch["input_ids"], batch["answer_region"]
    n = ids.shape[0]
    u = torch.rand((), device=ids.device, generator=generator)
    t = (u + torch.arange(n, device=ids.device) / n) % 1.0  # stratified: lower-variance than i.i.d. draws
    p = ((1 - eps) * t + eps)[:, None].expand_as(ids)
    masked = region & (torch.rand(ids.shape, device=ids.device, generator=generator) < p)
    noisy = torch.where(masked, torch.full_like(ids, mask_id), ids)
    logits = model(noisy, attention_mask=batch["attention_mask"]).logits
    token_loss = F.cross_entropy(logits[masked].float(), ids[masked], reduction="none") / p[masked]
    return token_loss.sum() / region.sum()


class DiffusionPretraining(L.LightningModule):
    def __init__(self, model_config: dict, lr: float = 3e-3, weight_decay: float = 0.1, warmup_steps: int = 200,
                 max_steps: int = 10000, min_lr_ratio: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = DiffusionLM(DiffusionLMConfig(**model_config))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = masked_diffusion_loss(self.model, batch, self.model.config.mask_token_id)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A resumed run trains at this run's ``lr``: the optimiser and schedule states saved in a checkpoint keep
        the rate they were made with, so lowering ``pretrain.lr`` after a divergence would otherwise change nothing.
        The schedule's position (warm-up, decay) is kept."""
        schedulers = checkpoint.get("lr_schedulers") or []
        if not schedulers or not schedulers[0].get("base_lrs"):
            return
        scale = self.hparams.lr / schedulers[0]["base_lrs"][0]
        for state in schedulers:
            state["base_lrs"] = [lr * scale for lr in state["base_lrs"]]
            state["_last_lr"] = [lr * scale for lr in state.get("_last_lr", [])]
        for state in checkpoint.get("optimizer_states") or []:
            for group in state["param_groups"]:
                group["lr"] *= scale
                if "initial_lr" in group:
                    group["initial_lr"] *= scale

    def configure_optimizers(self):
        hp = self.hparams
        decay = [p for n, p in self.model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in self.model.named_parameters() if p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=hp.lr, betas=(0.9, 0.98),
        )

        def schedule(step: int) -> float:  # linear warm-up, cosine decay to min_lr_ratio
            if step < hp.warmup_steps:
                return (step + 1) / hp.warmup_steps
            progress = min(1.0, (step - hp.warmup_steps) / max(1, hp.max_steps - hp.warmup_steps))
            return hp.min_lr_ratio + (1 - hp.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class DecodeAccuracy(L.Callback):
    """Vanilla-decodes validation prompts now and then and logs exact match: the number that matters."""

    def __init__(self, task, tokenizer, every: int, num_prompts: int, gen_length: int, block_length: int) -> None:
        self.task, self.tokenizer, self.every = task, tokenizer, every
        self.examples = task.examples("validation", num_prompts)
        self.prompts = [encode_prompt(tokenizer, ex) for ex in self.examples]
        self.settings = DecodeSettings(gen_length=gen_length, block_length=block_length, batch_size=64)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every and step != trainer.max_steps:
            return
        model = module.model.eval()
        out = decode(model, self.prompts, Vanilla(), self.settings, model.config.mask_token_id,
                     model.config.eos_token_id, device=module.device)
        model.train()
        texts = [decode_answer(self.tokenizer, row.tolist()) for row in out.tokens]
        scores = [self.task.score(ex, text) for ex, text in zip(self.examples, texts)]
        exact = sum(s.exact_match for s in scores) / len(scores)
        full = sum(s.full_match for s in scores) / len(scores)
        module.log_dict({"val/exact_match": exact, "val/full_match": full}, prog_bar=True)
        log.info("step %d: validation exact match %.3f, full match %.3f", step, exact, full)
