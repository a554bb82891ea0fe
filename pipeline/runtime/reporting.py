"""How a command reports a user's error: one line on stderr and exit status 2 (Ctrl-C: one line and 130), shared
by both front doors (``python -m pipeline`` and ``python -m pipeline.lm_eval``); ``HYDRA_FULL_ERROR=1`` keeps the
stack."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import sys
from collections.abc import Iterator

from hydra.errors import HydraException, MissingConfigException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from models.errors import EXIT_INTERRUPTED, EXIT_USAGE, UserError
from pipeline.runtime.leftovers import Leftovers

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
