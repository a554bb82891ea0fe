"""Reading one split of a Hugging Face hub dataset without the network.

Runs never download: a dataset is either a local directory (a ``huggingface-cli download`` copy in the hub's repo
layout, or a ``save_to_disk`` directory) or already in the local Hugging Face cache, read with offline mode forced so
a missing copy fails in a second instead of hanging on the network.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from models.errors import InputError

DATA_SUFFIXES = (".parquet", ".jsonl")
_CACHE: dict[tuple[str, str, str | None, str], list[dict[str, Any]]] = {}


def download_fix(hub_name: str, setting: str) -> str:
    """The one instruction that provides a dataset's files."""
    return (f"download it with `huggingface-cli download {hub_name} --repo-type dataset --local-dir DIR`, "
            f"then set {setting}=DIR")


def check_path(path: str | None, setting: str, hub_name: str) -> None:
    """Cheap: a given path must exist (the cache, path None, is only looked at when loading)."""
    if path is not None and not Path(path).exists():
        raise InputError(path, "does not exist", download_fix(hub_name, setting))


def load_split(path: str | None, hub_name: str, config: str | None, split: str, setting: str) -> list[dict[str, Any]]:
    """The rows of the dataset's own ``split`` (e.g. ``train``/``test``), read once per process."""
    key = (str(Path(path).resolve()) if path is not None else "", hub_name, config, split)
    if key not in _CACHE:
        _CACHE[key] = _from_cache(hub_name, config, split, setting) if path is None else \
            _from_directory(Path(path), hub_name, config, split, setting)
    return list(_CACHE[key])


def _from_cache(hub_name: str, config: str | None, split: str, setting: str) -> list[dict[str, Any]]:
    import datasets

    try:
        with offline():
            dataset = datasets.load_dataset(hub_name, config, split=split)
    except Exception as error:  # any failure means the same thing here: no usable local copy
        tried = f"load_dataset({hub_name!r}, {config!r}, split={split!r}) offline"
        raise InputError(hub_name, f"not in the local Hugging Face cache (tried {tried}: {error})",
                         download_fix(hub_name, setting)) from error
    return dataset.to_list()


@contextmanager
def offline():
    """Offline mode for one call; the libraries read the environment at import, so their flags are set too."""
    import datasets.config
    import huggingface_hub.constants

    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    saved_env = {name: os.environ.get(name) for name in names}
    saved_flags = (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE,
                   huggingface_hub.constants.HF_HUB_OFFLINE)
    os.environ.update(dict.fromkeys(names, "1"))
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE,
         huggingface_hub.constants.HF_HUB_OFFLINE) = saved_flags


def _from_directory(path: Path, hub_name: str, config: str | None, split: str,
                    setting: str) -> list[dict[str, Any]]:
    """The first layout found under ``path/config`` (when that exists), else under ``path``."""
    fix = download_fix(hub_name, setting)
    if not path.is_dir():
        raise InputError(path, "is not a directory", fix)
    root = path / config if config and (path / config).is_dir() else path
    for folder in (root, root / "data"):
        if (folder / split / "state.json").is_file():  # save_to_disk: DatasetDict/<split>/ or a Dataset per split
            import datasets

            try:
                return datasets.Dataset.load_from_disk(str(folder / split)).to_list()
            except Exception as error:  # a damaged arrow file or state
                raise InputError(folder / split, f"cannot be read with Dataset.load_from_disk ({error})",
                                 fix) from error
        files = split_files(folder, split)
        if files:
            return [row for file in files for row in read_rows(file, fix)]
    raise InputError(path, f"holds no {split} split (looked in {root} and {root / 'data'} for {split}/state.json, "
                           f"or .parquet/.jsonl files named with '{split}' or inside a {split}/ folder)", fix)


def split_files(folder: Path, split: str) -> list[Path]:
    """Data files of one split: named with the split as a word (``train-00000-of-00001.parquet``,
    ``math-test.parquet``, ``test.jsonl``) or inside a folder named after it (``train/0000.parquet``)."""
    word = re.compile(rf"(?<![a-z0-9]){re.escape(split)}(?![a-z0-9])", re.IGNORECASE)
    named = [f for f in folder.glob("*") if f.suffix in DATA_SUFFIXES and word.search(f.stem)]
    inside = [f for f in (folder / split).glob("*") if f.suffix in DATA_SUFFIXES]
    return sorted(f for f in named + inside if f.is_file())


def read_rows(file: Path, fix: str) -> list[dict[str, Any]]:
    """Rows of one parquet or JSON-lines file."""
    if file.suffix == ".parquet":
        import pyarrow.parquet

        try:
            return pyarrow.parquet.read_table(file).to_pylist()
        except Exception as error:  # pyarrow raises several types for a truncated or foreign file
            raise InputError(file, f"cannot be read as parquet ({error})", fix) from error
    return [row for _, row in json_lines(file, fix)]


def json_lines(file: Path, fix: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of a JSON-lines file; blank lines are skipped, a damaged one is named by number."""
    try:
        with file.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise InputError(file, f"line {number} is not valid JSON ({error.msg})", fix) from error
                if not isinstance(row, dict):
                    raise InputError(file, f"line {number} is not a JSON object", fix)
                yield number, row
    except UnicodeDecodeError as error:
        raise InputError(file, "is not UTF-8 text", fix) from error


def require_fields(rows: list[dict[str, Any]], fields: tuple[str, ...], source: str | Path, fix: str) -> None:
    """Every row must carry the fields a task reads; a foreign dataset fails here, not mid-run."""
    for index, row in enumerate(rows):
        missing = [name for name in fields if not isinstance(row.get(name), str)]
        if missing:
            raise InputError(source, f"row {index} has no text field {', '.join(map(repr, missing))} "
                                     f"(fields: {', '.join(row)})", fix)
