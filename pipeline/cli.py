"""The command line: ``python -m pipeline [-m] +experiment=NAME [stage=...] [overrides]``.

Before Hydra starts the app (and creates its run folder), every job the command will run is composed and
validated here, torch-free: a bad setting or input prints one line, ``error: <setting>=<value>: <allowed>``, and
exits with status 2, having written nothing. What can only be found after the start (a damaged file, an sbatch
refusal, training that diverges) prints the same one line and leaves nothing behind but what a rerun resumes from
(:mod:`pipeline.leftovers`); Ctrl-C prints ``interrupted: ...`` and exits with status 130. ``HYDRA_FULL_ERROR=1``
shows the full stack instead. ``stage=status`` only reads, so it runs without Hydra's run folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import hydra
from hydra._internal.utils import get_args_parser
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from pipeline.config import CONF_DIR, register
from pipeline.errors import EXIT_INTERRUPTED, EXIT_USAGE, UserError
from pipeline.leftovers import Leftovers
from pipeline.plan import is_multirun
from pipeline.validation import validate

DISK_ERRORS = {errno.ENOSPC: "the disk is full; free space or set output_dir to another disk",
               errno.EDQUOT: "the disk quota is exceeded; free space or set output_dir to another disk",
               errno.EACCES: "permission denied; set output_dir to a writable folder",
               errno.EROFS: "the file system is read-only; set output_dir to a writable folder"}


def full_errors() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


COMPOSING = (UserError, HydraException, OmegaConfBaseException, OSError)  # what composing a config may raise
RUNNING = (UserError, OSError)  # inside a stage, Hydra's and OmegaConf's errors are bugs and keep their stack


INTERRUPTED = ("interrupted: nothing was left half-written (finished artifacts, trajectory shards, sweep settings "
               "and filter checkpoints are kept); rerun the same command to resume")


@contextlib.contextmanager
def errors_reported(kinds: tuple[type[BaseException], ...], leftovers: Leftovers | None = None,
                    where: str | None = None) -> Iterator[None]:
    """A user's error becomes one line on stderr and exit status 2, Ctrl-C one line and status 130; anything else
    keeps its traceback. ``leftovers`` (a started run's) are cleared on either; ``where`` names the output folder
    when the system names no file."""
    try:
        yield
    except KeyboardInterrupt:
        if leftovers is not None:
            leftovers.remove()
        if full_errors():
            raise
        print(f"\n{INTERRUPTED}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except kinds as error:
        line = one_line(error, where)
        if line is None or full_errors():
            raise
        if leftovers is not None:
            leftovers.remove()
        print(f"error: {line}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def one_line(error: BaseException, where: str | None = None) -> str | None:
    """The message a user needs, or None when the error is not theirs to fix."""
    if isinstance(error, UserError):
        return str(error)
    disk = next((e for e in chain(error) if isinstance(e, OSError) and e.errno in DISK_ERRORS), None)
    if disk is not None:
        return f"{disk.filename or where or 'output_dir'}: {DISK_ERRORS[disk.errno]}"
    if isinstance(error, MissingConfigException):
        return missing_option(error)
    if isinstance(error, (HydraException, OmegaConfBaseException)):
        return composition_error(error)
    return None


def chain(error: BaseException) -> Iterator[BaseException]:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def missing_option(error: MissingConfigException) -> str:
    """``decode=nonsense`` -> ``decode=nonsense: no such option; allowed: egp, factor, ...``."""
    missing = error.missing_cfg_file or ""
    group, _, name = missing.rpartition("/")
    options = ", ".join(sorted(o for o in (error.options or []) if o != "schema"))
    if group:
        return f"{group}={name}: no such option; allowed: {options or '(none)'}"
    return str(error).strip().splitlines()[0]


def composition_error(error: BaseException) -> str:
    """Hydra's composition errors, with OmegaConf's reason beneath, as ``<override>: <reason>``."""
    causes = list(chain(error))
    lines = [line.strip() for e in causes for line in str(e).strip().splitlines() if line.strip()]
    override = next((line.split("override ", 1)[1] for line in lines if line.startswith("Error merging override ")),
                    None) or next((line.split(" use +", 1)[1] for line in lines if " use +" in line), None)
    root = next((e for e in causes if isinstance(e, OmegaConfBaseException) and getattr(e, "msg", None)), None)
    if root is None:
        return f"{override}: {lines[0]}" if override else lines[0]
    reason = str(root.msg).strip().splitlines()[0]
    where = override or root.full_key
    if isinstance(root, (ConfigKeyError, ConfigAttributeError)) and dataclasses.is_dataclass(root.object_type):
        setting = root.full_key if override and root.full_key.startswith(override.split("=")[0]) else \
            f"{override.split('=')[0]}: {root.key}" if override else root.full_key
        allowed = ", ".join(f.name for f in dataclasses.fields(root.object_type))
        return f"{setting}: no such setting; allowed: {allowed}"
    return f"{where}: {reason}"


def job_overrides(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override list of every job the command starts (one without ``-m``; the sweep's product with it)."""
    if not multirun:
        return [overrides]
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def check_syntax(overrides: list[str]) -> None:
    """Parse each override on its own, so a syntax error names the override it is in."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_override(override)
        except HydraException as error:  # the parser raises its base class, not OverrideParseException
            reason = str(error).strip().splitlines()[0]
            raise UserError(f"{override}: not a valid override ({reason}); allowed: key=value, key=[a,b], "
                            "key=a,b with -m; quote values holding spaces or brackets") from error


def preflight(overrides: list[str], multirun: bool, config_name: str | None) -> DictConfig:
    """Compose and validate every job before Hydra creates anything on disk; returns the last job's config."""
    from hydra import compose, initialize_config_dir

    check_syntax(overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="pipeline"):
        for job in job_overrides(overrides, multirun):
            cfg = compose(config_name=config_name or "config", overrides=job)
            validate(cfg, multirun=multirun)
    return cfg


READ_ONLY = ("status",)  # stages that only read the output folder


def run_read_only(cfg: DictConfig) -> None:
    """A read-only stage, run without Hydra's app, which would make a run folder (config and log) for it: it writes
    nothing. Its log lines go to stderr as in any run."""
    import logging

    from pipeline.cluster import LOG_FORMAT
    from pipeline.stages import run_stage

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    with errors_reported(RUNNING, where=f"output_dir={cfg.output_dir}"):
        run_stage(cfg)


BEFORE_START: dict[str, Leftovers] = {}  # the output folder as it was before Hydra made the run folder in it


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def app(cfg: DictConfig) -> object:
    from hydra.core.hydra_config import HydraConfig

    multirun = is_multirun()  # a multirun's jobs share their folders: nothing of theirs is removed
    leftovers = BEFORE_START.get(str(cfg.output_dir)) if not multirun else None
    if leftovers is not None:
        leftovers.run_dir = Path(HydraConfig.get().runtime.output_dir)
    with errors_reported(RUNNING, leftovers, where=f"output_dir={cfg.output_dir}"):
        validate(cfg, multirun=multirun)
        from pipeline.stages import run_stage

        return run_stage(cfg)


def main() -> None:
    register()
    # ``-m`` may stand anywhere among the overrides (Hydra's parser wants it before them)
    flags = [a for a in sys.argv[1:] if a in ("-m", "--multirun")]
    sys.argv[1:] = flags + [a for a in sys.argv[1:] if a not in flags]
    args = get_args_parser().parse_args()
    informational = (args.help or args.hydra_help or args.cfg or args.info or args.shell_completion
                     or args.config_path or args.config_dir or args.experimental_rerun)
    with errors_reported(COMPOSING):
        if not informational:
            cfg = preflight(args.overrides, args.multirun, args.config_name)
            if cfg.stage in READ_ONLY and not args.multirun:
                return run_read_only(cfg)
            BEFORE_START[str(cfg.output_dir)] = Leftovers(cfg.output_dir)
        app()
