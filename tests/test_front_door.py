"""What a user sees first: results on stdout, training progress in log files, and no library chatter on stderr."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import warnings

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from pipeline.runtime import progress, training
from pipeline.stages.context import LIGHTNING_CHATTER, LIGHTNING_LOGGERS, quiet_lightning
from tests.test_cli import MICRO, run_cli

LOG_LINE = re.compile(r"^\[[\d\- :,]+\]\[[\w.]+\]\[[A-Z]+\] - ")  # the pipeline's log format


class Tiny(L.LightningModule):
    """Enough of a model to train: one weight, a training and a validation loss."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train/loss", loss, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        self.log("val/loss", self.layer(batch[0]).pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(tmp_path, callbacks: list[L.Callback], max_epochs: int = 10, **trainer) -> None:
    data = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=8)
    settings = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    L.Trainer(max_epochs=max_epochs, default_root_dir=tmp_path, callbacks=callbacks, **{**settings, **trainer}
              ).fit(Tiny(), data, data)


def ten_second_epochs():
    """A clock that reads 10 s more at each look: the callback looks once at the start and once per line."""
    ticks = iter(range(0, 10_000, 10))
    return lambda: float(next(ticks))


def test_evaluate_prints_its_metrics_as_a_result_on_stdout(tmp_path):
    result = run_cli(MICRO, "stage=evaluate", "eval.num_prompts=4", "decode=threshold", "decode.threshold=0.7",
                     "decode.eotp=true", "progress=false", "logger=none", f"output_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "tiny-arith on arith test: threshold t=0.7 eotp L=32 block=8"
    assert [line.split()[0] for line in lines[1:]] == ["prompts", "accuracy", "full", "NFE", "tokens/s", "wall"]
    assert re.fullmatch(r"  accuracy +\d+\.\d%", lines[2]) and lines[1].split() == ["prompts", "4"]
    assert not [line for line in lines if LOG_LINE.match(line)], "log lines belong on stderr"
    assert "threshold gen_length=32 block=8 eotp=True: accuracy" in result.stderr  # the log line stays


def test_training_logs_its_progress_every_fifth_of_the_epochs_with_losses_and_eta(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=training.__name__)
    fit(tmp_path, [training.EpochLog("tiny", 10, lines=5, clock=ten_second_epochs())], check_val_every_n_epoch=3)
    lines = [r.getMessage() for r in caplog.records if r.name == training.__name__]
    loss = r"\d+\.\d{4}"
    assert [re.sub(loss, "L", line) for line in lines] == [
        "tiny: epoch 2/10 (20%), train loss L, 10 s elapsed, ETA 40 s",
        "tiny: epoch 4/10 (40%), train loss L, val loss L (epoch 3), 20 s elapsed, ETA 30 s",
        "tiny: epoch 6/10 (60%), train loss L, val loss L, 30 s elapsed, ETA 20 s",
        "tiny: epoch 8/10 (80%), train loss L, val loss L (epoch 6), 40 s elapsed, ETA 10 s",
        "tiny: epoch 10/10 (100%), train loss L, val loss L (epoch 9), 50 s elapsed",
    ]


def test_a_run_stopped_early_logs_its_last_epoch(tmp_path, caplog):
    class StopAtThree(L.Callback):
        def on_train_epoch_end(self, trainer, module) -> None:
            trainer.should_stop = trainer.current_epoch == 2

    caplog.set_level(logging.INFO, logger=training.__name__)
    fit(tmp_path, [training.EpochLog("tiny", 100, clock=ten_second_epochs()), StopAtThree()])
    lines = [r.getMessage() for r in caplog.records if r.name == training.__name__]
    assert lines[-1].startswith("tiny: epoch 3/100 (3%), train loss ") and lines[-1].endswith("stopped early")
    assert len(lines) == 1, "every 5% of 100 epochs: the first mark is epoch 5"


@pytest.mark.parametrize("asked, terminal, bar", [(True, True, True), (True, False, False), (False, True, False)])
def test_the_bar_is_drawn_only_when_asked_for_on_a_terminal(monkeypatch, asked, terminal, bar):
    class Stderr:
        def isatty(self) -> bool:
            return terminal

    monkeypatch.setattr("sys.stderr", Stderr())
    assert progress.bar_wanted(asked) is bar


@pytest.mark.parametrize("seconds, shown", [(0.4, "0 s"), (42, "42 s"), (210, "3.5 min"), (7560, "2.1 h")])
def test_durations_read_in_sensible_units(seconds, shown):
    assert progress.duration(seconds) == shown


def chatter(tmp_path, monkeypatch, quiet: bool) -> tuple[list[str], list[str]]:
    """The log lines and warnings of a short fit on a machine with many cores (Lightning's worker hint fires)."""
    import lightning.pytorch.trainer.connectors.data_connector as data_connector

    monkeypatch.setattr(data_connector, "suggested_max_num_workers", lambda devices: 8)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with quiet_lightning() if quiet else warnings.catch_warnings():
                L.seed_everything(0)
                fit(tmp_path, [], max_epochs=2, logger=L.pytorch.loggers.CSVLogger(tmp_path), log_every_n_steps=50)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    return [r.getMessage() for r in records], [str(w.message) for w in caught]


def test_lightning_chatter_is_silenced_and_its_real_warnings_kept(tmp_path, monkeypatch):
    noise = re.compile("|".join(LIGHTNING_CHATTER))
    logged, warned = chatter(tmp_path, monkeypatch, quiet=False)
    heard = {pattern for pattern in LIGHTNING_CHATTER for text in logged + warned if re.match(pattern, text)}
    assert {r"GPU available: ", r"💡 Tip: ", r"`Trainer\.fit` stopped: `max_", r"Seed set to ",
            r"The '\w+' does not have many workers"} <= heard, "the chatter this test silences must be heard first"
    logged, warned = chatter(tmp_path, monkeypatch, quiet=True)
    assert not [text for text in logged + warned if noise.match(text)]
    assert any("smaller than the logging interval" in text for text in warned), "a real warning still shows"


def test_filter_training_logs_progress_to_a_file_without_chatter(tmp_path):
    result = run_cli(MICRO, "stage=train_filter", "progress=true", "logger=none", f"output_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    epochs = re.findall(r"train_filter: epoch (\d+)/200 \(\d+%\), train loss \d\.\d{4}", result.stderr)
    assert epochs == [str(n) for n in range(10, 201, 10)], "stderr is a file here: log lines, not a bar"
    assert "it/s]" not in result.stderr and "Epoch 0:" not in result.stderr
    noise = [p for p in LIGHTNING_CHATTER if re.search(p, result.stderr)]
    assert not noise, f"Lightning's chatter reached stderr: {noise}"
    assert result.stdout == ""


def test_a_command_that_trains_nothing_never_imports_lightning():
    """Lightning's import alone takes seconds (it imports torchmetrics, and that transformers and scipy): the front
    door, the plan and every stage module leave it to the code that trains, so ``stage=status``, a sweep or an
    evaluation start without it."""
    modules = ["pipeline.cli", "pipeline.execution.local", "pipeline.execution.slurm", "pipeline.lm_eval.command",
               *(f"pipeline.stages.{name}" for name in ("trajectories", "train_filter", "train_policy", "sweep",
                                                       "aggregate", "benchmark", "evaluate", "pretrain",
                                                       "score_references"))]
    code = f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\nprint('lightning' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "False"
