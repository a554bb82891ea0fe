"""The command line: ``python -m pipeline [-m] +experiment=NAME [stage=...] [overrides]``.

Before Hydra starts the app (and creates its run folder), every job the command will run is composed and
validated here, torch-free: a bad setting or input prints one line, ``error: <setting>=<value>: <allowed>``, and
exits with status 2, having written nothing. What can only be found after the start (a damaged file, an sbatch
refusal, training that diverges) prints the same one line and leaves nothing behind but what a rerun resumes from
(:mod:`pipeline.runtime.leftovers`); Ctrl-C prints ``interrupted: ...`` and exits with status 130.
``HYDRA_FULL_ERROR=1`` shows the full stack instead. ``stage=status`` only reads, so it runs without Hydra's run folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra._internal.utils import get_args_parser
from hydra.errors import HydraException
from omegaconf import DictConfig

from models.errors import UserError
from pipeline.configuration.command import is_multirun
from pipeline.configuration.hydra import CONF_DIR, register
from pipeline.configuration.validation import validate
from pipeline.runtime.leftovers import Leftovers
from pipeline.runtime.reporting import COMPOSING, RUNNING, errors_reported


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



def execute(cfg: DictConfig) -> object:
    """The executor the command asked for: this process, or Slurm (``launcher=slurm``); ``stage=status`` reads."""
    if cfg.stage == "status":
        from pipeline.execution.slurm import status

        return status(cfg)
    if cfg.launcher.kind == "slurm":
        from pipeline.execution.slurm import submit

        return submit(cfg)
    from pipeline.execution.local import run

    return run(cfg)


READ_ONLY = ("status",)  # stages that only read the output folder


def run_read_only(cfg: DictConfig) -> None:
    """A read-only stage, run without Hydra's app, which would make a run folder (config and log) for it: it writes
    nothing. Its log lines go to stderr as in any run."""
    import logging

    from pipeline.execution.slurm import LOG_FORMAT
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    with errors_reported(RUNNING, where=f"output_dir={cfg.output_dir}"):
        execute(cfg)


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
        return execute(cfg)


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
