"""Training the Learn2PD filter in Lightning: a data module over trajectory shards and the BCE module.

Samples (prompts), not rows, are split 80/10/10, so no prompt's steps leak between train and validation.
Validation reports AUROC, and precision, recall and false-positive rate at the decode threshold, on the
positions that were still masked: the only ones whose acceptance changes decoding.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import BinaryAUROC, BinaryStatScores

from models.errors import ConfigError
from models.filter import BlockFilter, FilterConfig
from pipeline.learning.trajectories import FILTER_SPLITS, check_finite, filter_split_of


class TrajectoryDataModule(L.LightningDataModule):
    """Rows of one or more trajectory artifacts (the oracle's round and any on-policy rounds), split by prompt."""

    def __init__(self, shards: Path | list[Path], recorded: list[str], features: list[str], batch_size: int | None,
                 seed: int = 0) -> None:
        super().__init__()
        missing = [f for f in features if f not in recorded]
        if missing:
            raise ConfigError("filter.features", features, f"{missing} were not recorded; allowed: {recorded} "
                                                           "(or add them to trajectories.features)")
        self.shards = [shards] if isinstance(shards, Path) else list(shards)
        self.recorded, self.features = recorded, features
        self.batch_size, self.seed = batch_size, seed
        self.splits: dict[str, TensorDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        from datasets import concatenate_datasets

        from pipeline.learning.trajectories import load_shards

        data = concatenate_datasets([load_shards(path) for path in self.shards]).with_format("numpy")
        columns = [self.recorded.index(f) for f in self.features]
        selected = np.stack(data["features"])[..., columns].astype(np.float32)
        check_finite(selected, self.features, self.shards[-1])
        features = torch.from_numpy(selected)
        labels = torch.from_numpy(np.stack(data["label"]).astype(np.float32))
        masked = torch.from_numpy(np.stack(data["masked"]).astype(bool))
        splits = np.array([filter_split_of(int(s), self.seed) for s in data["sample"]])
        for name in FILTER_SPLITS:
            index = torch.from_numpy(splits == name)
            if not index.any():
                raise ConfigError("trajectories.num_prompts", len(set(data["sample"])),
                                  f"too few prompts: the 80/10/10 split by prompt left {name} empty; allowed: more "
                                  "prompts (a few dozen at least)")
            self.splits[name] = TensorDataset(features[index], labels[index], masked[index])

    def sizes(self) -> dict[str, int]:
        return {name: len(ds) for name, ds in self.splits.items()}

    def balanced_pos_weight(self, loss_on: str) -> float:
        """Negatives per positive among the training labels the loss sees: the weight that balances the classes."""
        _, labels, masked = self.splits["train"].tensors
        seen = labels[masked] if loss_on == "masked" else labels.reshape(-1)
        positives = float(seen.sum())
        return (len(seen) - positives) / max(positives, 1.0)

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        dataset = self.splits[name]
        if not self.batch_size:  # full batch, as published: one batch per epoch, in a fixed order
            return DataLoader(dataset, batch_size=max(1, len(dataset)))
        sampler = EpochShuffle(len(dataset), self.seed) if shuffle else None
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)


class EpochShuffle(torch.utils.data.Sampler):
    """A shuffle that depends only on (seed, epoch), so a run resumed from a checkpoint sees the same batches
    as one that was never interrupted (Lightning calls ``set_epoch``)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())


def choose_threshold(probs: torch.Tensor, labels: torch.Tensor, target: float) -> dict[str, float]:
    """The lowest threshold whose acceptances (``prob > threshold``) reach ``target`` precision: the largest top-m
    of positions by probability whose precision is still >= target. 1.0 (accept nothing) when even the most
    confident position misses it."""
    order = probs.argsort(descending=True)
    sorted_probs, hits = probs[order], labels[order].float().cumsum(0)
    precision = hits / torch.arange(1, len(probs) + 1, device=probs.device)
    ok = (precision >= target).nonzero()
    total = max(float(labels.sum()), 1.0)
    if len(ok) == 0:
        return {"threshold": 1.0, "precision": 1.0, "recall": 0.0}
    m = int(ok[-1])  # accept the top m + 1
    below = float(sorted_probs[m + 1]) if m + 1 < len(probs) else 0.0
    threshold = (float(sorted_probs[m]) + below) / 2  # strictly between the last accepted and the first rejected
    return {"threshold": threshold, "precision": float(precision[m]), "recall": float(hits[m]) / total}


@torch.no_grad()
def masked_predictions(network: torch.nn.Module, dataset: TensorDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The filter's probabilities and the labels at the still-masked positions of a split."""
    features, labels, masked = dataset.tensors
    probs = torch.sigmoid(network(features))
    return probs[masked], labels[masked]


def metrics_at(probs: torch.Tensor, labels: torch.Tensor, threshold: float) -> dict[str, float]:
    accept, positive = probs > threshold, labels > 0.5
    tp = float((accept & positive).sum())
    return {"precision": tp / max(float(accept.sum()), 1.0), "recall": tp / max(float(positive.sum()), 1.0),
            "accepted": float(accept.float().mean()) if len(accept) else 0.0}


class FilterModule(L.LightningModule):
    def __init__(self, filter_config: dict, lr: float = 3e-3, weight_decay: float = 0.0, threshold: float = 0.9,
                 loss_on: str = "all", pos_weight: float = 1.0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.network = BlockFilter(FilterConfig(**filter_config))
        self.metrics = torch.nn.ModuleDict({
            split: torch.nn.ModuleDict({"auroc": BinaryAUROC(), "stats": BinaryStatScores(threshold=threshold)})
            for split in ("val", "test")
        })

    def _loss(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        features, labels, masked = batch
        logits = self.network(features)
        weight = masked.float() if self.hparams.loss_on == "masked" else torch.ones_like(labels)
        loss = F.binary_cross_entropy_with_logits(
            logits, labels, weight=weight, pos_weight=torch.tensor(self.hparams.pos_weight, device=self.device),
            reduction="sum",
        ) / weight.sum().clamp(min=1)
        return loss, logits

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, on_epoch=True, on_step=False)
        return loss

    def _evaluate(self, split: str, batch) -> None:
        loss, logits = self._loss(batch)
        _, labels, masked = batch
        probs = torch.sigmoid(logits[masked])
        self.metrics[split]["auroc"].update(probs, labels[masked].long())
        self.metrics[split]["stats"].update(probs, labels[masked].long())
        self.log(f"{split}/loss", loss, prog_bar=split == "val")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate("val", batch)

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate("test", batch)

    def _log_epoch(self, split: str) -> None:
        tp, fp, tn, fn, _ = self.metrics[split]["stats"].compute().float()
        self.log_dict({
            f"{split}/auroc": self.metrics[split]["auroc"].compute(),
            f"{split}/precision": tp / (tp + fp).clamp(min=1),
            f"{split}/recall": tp / (tp + fn).clamp(min=1),
            f"{split}/fpr": fp / (fp + tn).clamp(min=1),
        }, prog_bar=split == "val")
        for metric in self.metrics[split].values():
            metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
