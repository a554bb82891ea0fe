"""``python -m pipeline.lm_eval ARGS``: lm-evaluation-harness's own command line (``lm_eval ARGS``, every option
as it documents them) with the project's ``learn2pd`` model registered, offline unless ``--allow_download``.

Before lm-eval loads anything, :func:`preflight` checks the command as the project checks its own, torch-free,
in a few seconds at most: lm-eval's arguments as lm-eval's own parser reads them (``--limit``, ``--seed``,
``--include_path``, ``--output_path``, ...), the task names resolved against the task files (read as text:
lm-eval's own index takes several seconds) and, for ``--model learn2pd``, the model arguments composed into the
project's config and validated. A refusal is one line, ``error: <setting or file>: <what is allowed>``, exit
status 2; Ctrl-C one ``interrupted:`` line saying what was written, exit status 130.

After lm-eval's results, the speed of each task's decodes is printed (mean NFE, generated tokens per second) and,
with ``--output_path``, written beside lm-eval's results file as ``learn2pd_speed.json``. Hub datasets are read from
the local hub cache (or a task's local ``dataset_path``); a missing one is one line naming it and the command that
fetches it.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import fnmatch
import glob
import io
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from models.errors import EXIT_INTERRUPTED, ConfigError, InputError, UserError, first_line
from pipeline.lm_eval.project import compose_project, decode_batch, whole
from pipeline.tasks.lm_eval_files import (
    ALLOW_DOWNLOAD,
    index_folders,
    missing_dataset,
    names_of,
    read_task_file,
    registered_in,
    scan_builtin,
    task_files,
)

LIST_TASKS = "`python -m pipeline.lm_eval ls tasks` lists them"


# --- lm-eval's own arguments --------------------------------------------------------------------------------------
def refuse_usage(message: str) -> None:
    """argparse's refusal (usage block and all) as one line: ``argument --limit/-L: ...`` -> ``--limit: ...``."""
    raise UserError(re.sub(r"^argument (\S+?)(/\S+)?: ", r"\1: ", message))


def seed_type(parse: Any) -> Any:
    """lm-eval's ``--seed`` parser, whose refusal argparse would name by its ``functools.partial`` repr."""
    def seeds(value: str) -> list[int | None]:
        try:
            return parse(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{error}; allowed: an integer, or four comma-separated "
                                             "(python,numpy,torch,fewshot; None leaves one unseeded)") from error

    return seeds


@contextlib.contextmanager
def checking_quietly() -> Iterator[None]:
    """lm-eval's warnings and printouts while its arguments are only checked (it repeats them when it runs)."""
    logger = logging.getLogger("lm_eval")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def parse_lm_eval(argv: list[str]) -> tuple[argparse.Namespace, Any] | None:
    """lm-eval's arguments and the evaluation config it builds from them, through its own parser (cheap: no model,
    task or dataset module is imported); None for its other commands (``ls``, ``validate``, ``--help``)."""
    from lm_eval._cli import HarnessCLI
    from lm_eval.config.evaluate_config import EvaluatorConfig

    cli = HarnessCLI()
    for parser in (cli._parser, *cli._subparsers.choices.values()):
        parser.error = refuse_usage
    for action in cli._subparsers.choices["run"]._actions:
        if action.dest == "seed":
            action.type = seed_type(action.type)
    saved, sys.argv = sys.argv, ["lm_eval", *argv]
    try:
        args = cli.parse_args()
    finally:
        sys.argv = saved
    if args.command != "run":
        return None
    with checking_quietly():
        try:
            return args, EvaluatorConfig.from_cli(args)
        except (ValueError, TypeError, OSError) as error:  # its own cross-checks (--log_samples needs --output_path)
            raise UserError(first_line(error)) from error


def non_finite(value: Any, where: str) -> Iterator[tuple[str, float]]:
    """Every NaN or infinity in a nested structure, with where it sits."""
    if isinstance(value, float) and not math.isfinite(value):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from non_finite(item, f"{where} {key}" if where else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from non_finite(item, f"{where}[{index}]")


def check_run(args: argparse.Namespace, config: Any) -> None:
    """The options of ``lm_eval run`` that lm-eval would refuse late (after loading the model) or not at all."""
    from pipeline.configuration.validation import SEED_RANGE, check_writable

    limit = config.limit
    if limit is not None and not (0 < limit < 1 or (whole(limit) or 0) >= 1):
        raise ConfigError("--limit", f"{limit:g}", "allowed: a number of documents per task (an integer >= 1) or a "
                                                   "fraction of them in (0, 1)")
    for value in config.seed or []:
        if value is not None and not SEED_RANGE[0] <= value <= SEED_RANGE[1]:
            raise ConfigError("--seed", value, f"allowed: integers from {SEED_RANGE[0]} to {SEED_RANGE[1]} (one, or "
                                               "python,numpy,torch,fewshot)")
    if config.num_fewshot is not None and config.num_fewshot < 0:
        raise ConfigError("--num_fewshot", config.num_fewshot, "allowed: an integer >= 0")
    decode_batch(config.batch_size, "--batch_size")
    for where, value in non_finite(config.gen_kwargs, ""):
        raise ConfigError(f"--gen_kwargs {where}", value, "allowed: a finite number")
    for folder in include_paths(config):
        if not Path(folder).is_dir():
            raise InputError(folder, "no such folder", "point --include_path at a folder of lm-eval task YAML files")
    if config.output_path:
        path = Path(config.output_path)
        check_writable(path.parent if path.suffix == ".json" else path, "--output_path")
    if config.model == "learn2pd":
        given = {"device": args.device, "batch_size": getattr(args, "batch_size", None)}
        for key, value in given.items():
            if value is not None and key in config.model_args and str(config.model_args[key]) != str(value):
                raise ConfigError(f"--model_args {key}", config.model_args[key],
                                  f"--{key} {value} says otherwise; allowed: one of the two, or both the same")
        # as the model will be given them; lm-eval's default device (cuda:0) is auto there, CUDA where it exists
        defaults = {"batch_size": config.batch_size, "max_batch_size": config.max_batch_size,
                    "device": args.device or "auto"}
        compose_project({**{k: v for k, v in defaults.items() if v is not None}, **config.model_args})


def include_paths(config: Any) -> list[str]:
    paths = config.include_path
    return [] if not paths else [str(p) for p in (paths if isinstance(paths, (list, tuple)) else [paths])]


# --- tasks -------------------------------------------------------------------------------------------------------
def check_data_files(path: Path, cfg: dict[str, Any]) -> None:
    """A task's local data files (``dataset_kwargs.data_files``, as the ``json`` dataset reads them) exist: the
    datasets library would say so only once the model has loaded."""
    kwargs = cfg.get("dataset_kwargs")
    files = kwargs.get("data_files") if isinstance(kwargs, dict) else None
    for value in files.values() if isinstance(files, dict) else [files]:
        for name in [value] if isinstance(value, str) else value if isinstance(value, list) else []:
            if isinstance(name, str) and "://" not in name and not glob.glob(os.path.expanduser(name)):
                raise InputError(name, "no such data file", f"fix dataset_kwargs.data_files in {path}")


def check_tasks(tasks: str | list[str] | None, roots: list[str]) -> None:
    """Every ``--tasks`` entry is a task, group or tag lm-eval knows (built in or under ``--include_path``), an
    existing task file, or a folder of them; as lm-eval splits and matches them (glob patterns included)."""
    listed_tasks = tasks.split(",") if isinstance(tasks, str) else [t for task in tasks or [] for t in task.split(",")]
    names = [name for name in listed_tasks if name]
    if not names:
        raise ConfigError("--tasks", None, f"allowed: lm-eval task names, task YAML files or a folder of them; "
                                           f"{LIST_TASKS}")
    if len(names) == 1 and Path(names[0]).is_dir():
        files = task_files(Path(names[0]), "*.yaml")
        if not files:
            raise InputError(names[0], "holds no task YAML files", f"name tasks instead ({LIST_TASKS})")
        for path in files:
            check_data_files(path, read_task_file(path))
        return
    read, broken = index_folders(roots)
    local = {name for _, cfg in read for name in names_of(cfg)}
    for path, cfg in read:
        if any(fnmatch.filter(names_of(cfg), name) for name in names):
            check_data_files(path, cfg)
    unknown = []
    for name in names:
        if name.endswith(".yaml"):
            files = glob.glob(str(Path(name).absolute()))
            if not files:
                raise InputError(name, "no such task file", f"give an existing task YAML file or a task name "
                                                            f"({LIST_TASKS})")
            for path in files:
                check_data_files(Path(path), read_task_file(Path(path)))
        elif not fnmatch.filter(local, name):
            unknown.append(name)
    for name in unknown:  # lm-eval would skip the file and look for the name elsewhere
        for path, error in broken:
            if path.stem == name or name in path.read_text(errors="replace"):
                raise error
    if not unknown:
        return
    builtin, mentions, includers = scan_builtin(unknown)
    unknown = [name for name in unknown if not fnmatch.filter(builtin, name)]
    if unknown:  # to be sure, by lm-eval's own rules: the few files that may name them
        found = registered_in(set().union(*(mentions[name] for name in unknown)), includers)
        unknown = [name for name in unknown if not fnmatch.filter(found, name)]
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(local | builtin), n=3)
        hint = f"close matches: {', '.join(close)}" if close else "no close match"
        where = "built in or under --include_path" if roots else "built in (add your own with --include_path)"
        raise ConfigError("--tasks", unknown[0], f"no such lm-eval task {where}; {hint}; {LIST_TASKS}")


def preflight(argv: list[str]) -> Any:
    """Check an ``lm_eval run`` command before lm-eval loads anything: its arguments, the learn2pd model's, the
    tasks. Returns lm-eval's evaluation config (None for its other commands)."""
    parsed = parse_lm_eval(argv)
    if parsed is None:
        return None
    args, config = parsed
    with checking_quietly():
        check_run(args, config)
        check_tasks(config.tasks, include_paths(config))
    return config


# --- the run ------------------------------------------------------------------------------------------------------
def speed_table(speed: dict[str, dict[str, float]]) -> str:
    lines = ["| task | samples | NFE (mean) | generated tokens | tokens/s |", "|---|---|---|---|---|"]
    for task, s in sorted(speed.items()):
        lines.append(f"| {task} | {s['samples']} | {s['nfe_mean']:.1f} | {s['tokens']} | {s['tokens_per_s']:.1f} |")
    return "\n".join(lines)


def new_results(output_path: str | None, since: float) -> list[Path]:
    """lm-eval's results files written since ``since``, oldest first (a ``.json`` output path is a name stem; a
    folder gets a folder named after the model)."""
    if not output_path:
        return []
    path = Path(output_path)
    folder, pattern = (path.parent, f"{path.stem}_*.json") if path.suffix == ".json" else (path, "**/results_*.json")
    found = [p for p in folder.glob(pattern) if p.stat().st_mtime >= since] if folder.is_dir() else []
    return sorted(found, key=lambda p: p.stat().st_mtime)


def interrupted_line(state: dict[str, Any]) -> str:
    """What a Ctrl-C leaves: lm-eval writes its results only once every task is scored."""
    written = new_results(state["output_path"], state["started"])
    if not written:
        return "lm-eval stopped; no results were written"
    if state["evaluated"]:
        return f"lm-eval's results are in {written[-1].parent}; learn2pd_speed.json was not written"
    return f"lm-eval stopped while writing its results in {written[-1].parent}; they may lack samples"


@contextlib.contextmanager
def interruption_reported(state: dict[str, Any]) -> Iterator[None]:
    """Ctrl-C: one line saying what was written, exit status 130 (``HYDRA_FULL_ERROR=1``: the stack instead)."""
    from pipeline.runtime.reporting import full_errors

    try:
        yield
    except KeyboardInterrupt:
        if full_errors():
            raise
        print(f"\ninterrupted: {interrupted_line(state)} (rerun the same command)", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


def write_speed(lm: Any, speed: dict[str, dict[str, float]], output_path: str, since: float) -> None:
    """``learn2pd_speed.json`` beside lm-eval's newest results file; a NaN or infinity is refused, not written."""
    payload = {"model": lm.name, "decode": lm.settings.identity(), "speed": speed, "processes": lm.world_size}
    for where, value in non_finite(payload, ""):
        raise FloatingPointError(f"learn2pd_speed.json: {where} is {value}, not a finite number; it was not written")
    written = new_results(output_path, since)
    path = Path(output_path)
    folder = written[-1].parent if written else path.parent if path.suffix == ".json" else path
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "learn2pd_speed.json"
    partial = target.with_suffix(".json.partial")
    try:
        partial.write_text(json.dumps(payload, indent=2, allow_nan=False))
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)


def evaluate(argv: list[str], allow_download: bool, state: dict[str, Any]) -> None:
    """lm-eval's own command line, then the learn2pd model's speed."""
    from lm_eval.__main__ import cli_evaluate

    import pipeline.lm_eval.model as harness  # registers the learn2pd model
    from pipeline.tasks.hub import offline

    sys.argv = ["lm_eval", *argv]
    with nullcontext() if allow_download else offline():
        cli_evaluate()
    state["evaluated"] = True
    lm = harness.Learn2PDLM.last
    if lm is None:
        return
    try:
        ranks = lm.counts_over_ranks()  # every process takes part; the first reports for all
    finally:
        lm.ranks.leave()
    speed = lm.speed(ranks) if ranks is not None else {}
    if not speed:
        return
    over = f", {lm.world_size} processes" if lm.world_size > 1 else ""
    print(f"\nlearn2pd decoding speed (generated tokens only{over}):")
    print(speed_table(speed))
    if state["output_path"]:
        write_speed(lm, speed, state["output_path"], state["started"])


def lm_eval_refusal(error: BaseException) -> UserError | None:
    """What lm-eval raises that is the user's to fix, as one line."""
    if isinstance(error, FloatingPointError):  # a likelihood that overflowed, a speed that is not a number
        return UserError(first_line(error))
    if str(error).startswith("Tasks not found: "):  # named by a task file the preflight read as text only
        return ConfigError("--tasks", str(error).split(": ", 1)[1], f"no such lm-eval task; {LIST_TASKS}")
    return missing_dataset(error)


def main(argv: list[str] | None = None) -> None:
    from pipeline.runtime.reporting import COMPOSING, errors_reported

    argv = list(sys.argv[1:] if argv is None else argv)
    allow_download = ALLOW_DOWNLOAD in argv
    argv = [a for a in argv if a != ALLOW_DOWNLOAD]
    state = {"output_path": None, "started": time.time(), "evaluated": False}
    with errors_reported(COMPOSING), interruption_reported(state):
        config = preflight(argv)
        state["output_path"] = config.output_path if config is not None else None
        try:
            evaluate(argv, allow_download, state)
        except (FloatingPointError, OSError, ValueError, RuntimeError) as error:
            user = lm_eval_refusal(error)
            if user is None:
                raise
            raise user from error
