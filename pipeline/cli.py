"""The command line: ``python -m pipeline [-m] +experiment=NAME [stage=...] [overrides]``.

Before Hydra starts the app (and creates its run folder), every job the command will run is composed and
validated here, torch-free: a bad setting or input prints one line, ``error: <setting>=<value>: <allowed>``, and
exits with status 2, having written nothing. What can only be found after the start (a damaged file, an sbatch
refusal, training that diverges) prints the same one line and leaves nothing behind but what a rerun resumes from
(:mod:`pipeline.runtime.leftovers`); Ctrl-C prints ``interrupted: ...`` and exits with status 130.
``HYDRA_FULL_ERROR=1`` shows the full stack instead. ``stage=status`` only reads, so it runs without Hydra's run folder.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra._internal.hydra import Hydra
from hydra._internal.utils import get_args_parser, run_and_report
from hydra.errors import HydraException
from hydra.types import RunMode
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


def run_app(cfg: DictConfig) -> object:
    """The app Hydra runs in each job's folder: validate (again, where the job runs) and execute."""
    from hydra.core.hydra_config import HydraConfig

    multirun = is_multirun()  # a multirun's jobs share their folders: nothing of theirs is removed
    leftovers = BEFORE_START.get(str(cfg.output_dir)) if not multirun else None
    if leftovers is not None:
        leftovers.run_dir = Path(HydraConfig.get().runtime.output_dir)
    with errors_reported(RUNNING, leftovers, where=f"output_dir={cfg.output_dir}"):
        validate(cfg, multirun=multirun)
        return execute(cfg)


app = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(run_app)
TASK_NAME = "cli"  # the job name ``hydra.main`` gives this module's app (the calling file's stem)


def hydra_application() -> Hydra:
    """The Hydra application ``app`` starts: the same config search path and job name."""
    from hydra._internal.utils import create_automatic_config_search_path

    search_path = create_automatic_config_search_path(None, None, str(CONF_DIR))
    return Hydra.create_main_hydra2(task_name=TASK_NAME, config_search_path=search_path)


def run_composed(application: Hydra, cfg: DictConfig, config_name: str, overrides: list[str]) -> None:
    """``Hydra.run``'s steps for a config already composed and validated: ``hydra.main`` would compose it twice
    more (once to read ``hydra.mode``, once to run), about 0.2 s of CPU each, on every command."""
    import hydra._internal.hydra as hydra_module
    from hydra._internal.callbacks import Callbacks
    from hydra.core.utils import configure_log, run_job
    from hydra.types import HydraContext

    configure_log(cfg.hydra.hydra_logging, cfg.hydra.verbose)  # what composing with the log configuration does
    hydra_module.log = logging.getLogger(hydra_module.__name__)
    application._print_debug_info(config_name, overrides, RunMode.RUN)
    callbacks = Callbacks(cfg)
    callbacks.on_run_start(config=cfg, config_name=config_name)
    ret = run_job(hydra_context=HydraContext(config_loader=application.config_loader, callbacks=callbacks),
                  task_function=run_app, config=cfg, job_dir_key="hydra.run.dir", job_subdir_key=None)
    callbacks.on_run_end(config=cfg, config_name=config_name, job_return=ret)
    _ = ret.return_value  # raises the app's error, as Hydra's run does


def main() -> None:
    """One run composes its config once, validates it and runs it in Hydra's run folder (:func:`run_composed`);
    a multirun, or a flag that only informs (``--help``, ``--cfg``, ...), goes through ``hydra.main``."""
    register()
    # ``-m`` may stand anywhere among the overrides (Hydra's parser wants it before them)
    flags = [a for a in sys.argv[1:] if a in ("-m", "--multirun")]
    sys.argv[1:] = flags + [a for a in sys.argv[1:] if a not in flags]
    args = get_args_parser().parse_args()
    informational = (args.help or args.hydra_help or args.cfg or args.info or args.shell_completion
                     or args.config_path or args.config_dir or args.experimental_rerun)
    if informational:
        return app()
    config_name = args.config_name or "config"
    through_hydra_main = args.multirun or any(o.startswith("hydra.mode=") for o in args.overrides)
    with errors_reported(COMPOSING):
        if through_hydra_main:
            cfg = preflight(args.overrides, args.multirun, config_name)
        else:
            check_syntax(args.overrides)
            overrides = [*args.overrides, "hydra.mode=RUN"]  # as Hydra adds it to a run that does not set it
            application = hydra_application()
            cfg = application.compose_config(config_name, overrides, run_mode=RunMode.RUN, from_shell=False)
            validate(cfg)
        if cfg.stage in READ_ONLY and not args.multirun:
            return run_read_only(cfg)
        BEFORE_START[str(cfg.output_dir)] = Leftovers(cfg.output_dir)
    if through_hydra_main:
        return app()
    run_and_report(lambda: run_composed(application, cfg, config_name, overrides))
