"""Hydra callbacks of the pipeline (``hydra.callbacks`` in conf/config.yaml)."""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback


class FailedJobsFailOnSlurm(Callback):
    """Makes a failed multirun job fail on Slurm as well.

    Hydra's ``run_job`` catches the task's exception and returns it as a value, so under hydra-submitit-launcher a
    job whose stage raised ended with exit status 0 and Slurm recorded it COMPLETED (``afterok`` dependents would
    start). Raising the exception again once Hydra has finished with the job makes the job exit non-zero: Slurm
    records FAILED and the submitting command reports the error. Outside a submitit Slurm job nothing changes.
    It exits rather than raises: Hydra turns an exception in a callback into a warning.
    """

    def on_job_end(self, config: Any, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status == JobStatus.FAILED and os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
            traceback.print_exception(job_return._return_value, file=sys.stderr)
            sys.stderr.flush()
            raise SystemExit(1)
