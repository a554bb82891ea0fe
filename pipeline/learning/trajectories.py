"""Reading and naming trajectory shards: the format the trajectories stage writes and filter training reads."""

from __future__ import annotations

import zlib
from pathlib import Path

from models.errors import InputError

# train_filter's 80/10/10 split, by prompt: a hash of the seed and the prompt's index picks one of ten buckets
FILTER_SPLITS = {"train": range(0, 8), "val": range(8, 9), "test": range(9, 10)}


def filter_split_of(prompt: int, seed: int) -> str:
    """Which of train_filter's splits a trajectory prompt falls in (every step of a prompt stays together)."""
    bucket = zlib.crc32(f"{seed}:{prompt}".encode()) % 10
    return next(name for name, buckets in FILTER_SPLITS.items() if bucket in buckets)


def shard_name(index: int, count: int) -> str:
    return f"shard-{index:05d}-of-{count:05d}"


def load_shards(shards: Path):
    """All shards as one ``datasets.Dataset``; a damaged shard is named with what to do."""
    from datasets import concatenate_datasets, load_from_disk

    parts = []
    for path in sorted(p for p in shards.iterdir() if p.name.startswith("shard-")):
        try:
            parts.append(load_from_disk(str(path)))
        except Exception as error:  # datasets raises many kinds; all mean the shard cannot be read
            raise InputError(path, f"damaged trajectory shard ({type(error).__name__}: {error})",
                             f"delete {shards.parent} and rerun to recompute it") from error
    if not parts:
        raise InputError(shards, "no trajectory shards", f"delete {shards.parent} and rerun to recompute it")
    return concatenate_datasets(parts)


def check_finite(features, names: list[str], where: Path) -> None:
    """Never learn from garbage: name the features holding NaN or infinity. ``features``: [rows, B, F]."""
    import numpy as np

    bad = [name for i, name in enumerate(names) if not np.isfinite(features[..., i]).all()]
    if bad:
        raise InputError(where, f"non-finite values (NaN or infinity) in the features {bad}",
                         "a feature is broken: fix it, then delete this artifact and rerun")
