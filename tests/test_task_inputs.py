"""``task=lm_eval`` inputs through the command line: a broken JSON-lines file is named with its line, whether the
user gave it (``task.data_files``) or the task's YAML reads it, and impossible settings are refused at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_cli import run_cli

TASK = """task: sums_local
dataset_path: json
dataset_kwargs:
  data_files:
    train: {train}
    test: {test}
training_split: train
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{final}}}}"
generation_kwargs:
  until: ["#"]
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tasks")
    (folder / "good.jsonl").write_text('{"prompt": "1+1=", "final": "2"}\n{"prompt": "2+2=", "final": "4"}\n')
    (folder / "broken.jsonl").write_text('{"prompt": "1+1=", "final": "2"}\n{"prompt": "2+2=", "final": \n')
    (folder / "sums_local.yaml").write_text(TASK.format(train=folder / "good.jsonl", test=folder / "broken.jsonl"))
    return folder


def refused(tmp_path: Path, *args: str) -> str:
    result = run_cli("stage=evaluate", "task=lm_eval", "task.lm_eval_task=sums_local", "eval.num_prompts=1",
                     f"output_dir={tmp_path / 'out'}", *args)
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr and line.startswith("error: "), result.stderr[-2000:]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out" / "artifacts").rglob("manifest.json"))
    return line


def test_a_broken_line_in_the_task_yaml_s_data_is_named_with_its_file_and_line(tasks, tmp_path):
    line = refused(tmp_path, f"task.include_path={tasks}")
    assert line.startswith(f"error: {tasks / 'broken.jsonl'}: line 2 is not valid JSON"), line


def test_a_broken_line_in_task_data_files_is_refused_before_the_run_starts(tasks, tmp_path):
    line = refused(tmp_path, f"task.include_path={tasks}",
                   f"task.data_files={{train: {tasks / 'good.jsonl'}, test: {tasks / 'broken.jsonl'}}}")
    assert line == (f"error: {tasks / 'broken.jsonl'}: line 2 is not valid JSON (Expecting value); make it one "
                    "JSON object per line, with the fields the task's YAML reads"), line
    assert not (tmp_path / "out").exists(), "refused before Hydra made a run folder"


@pytest.mark.parametrize("setting,message", [
    ("task.num_fewshot=-1", "task.num_fewshot=-1: allowed: an integer >= 0, or null"),
    ("task.fewshot_seed=-5", "task.fewshot_seed=-5: allowed: an integer from 0 to 4294967295"),
    ("task.data_files={tests: x.jsonl}", "task.data_files.tests=x.jsonl: allowed: splits train, validation, test"),
])
def test_impossible_task_settings_are_refused_before_the_run_starts(tasks, tmp_path, setting, message):
    line = refused(tmp_path, f"task.include_path={tasks}", setting)
    assert line.startswith(f"error: {message}"), line
    assert not (tmp_path / "out").exists()
