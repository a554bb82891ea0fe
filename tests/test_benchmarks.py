"""Benchmarks through the command line: every task's reference answers pass its own scorer (stage=score_references),
the check a researcher runs before trusting a number."""

from __future__ import annotations

import pytest

from tests.test_cli import run_cli
from tests.test_tasks import gsm8k_dir, math_dir  # noqa: F401  (fixtures: tiny local copies in the hub layouts)


def score_references(tmp_path, *args: str) -> str:
    result = run_cli("stage=score_references", f"output_dir={tmp_path / 'out'}", "logger=none", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


def test_humaneval_s_canonical_solutions_pass_in_the_sandbox(tmp_path):
    """The first 24 through the command line (tests.test_sandbox scores all 164 through the task)."""
    assert score_references(tmp_path, "task=humaneval", "references.num_prompts=24") == \
        "humaneval test: 24/24 reference answers pass (100.0%)"


def test_gsm8k_and_math_references_pass_their_extraction(tmp_path, gsm8k_dir, math_dir):  # noqa: F811
    assert score_references(tmp_path, "task=gsm8k", f"task.path={gsm8k_dir}", "task.num_shots=2") == \
        "gsm8k test: 4/4 reference answers pass (100.0%)"
    assert score_references(tmp_path, "task=math", f"task.path={math_dir}") == \
        "math test: 14/14 reference answers pass (100.0%)"


def test_the_embedded_task_s_references_pass(tmp_path):
    assert score_references(tmp_path, "references.num_prompts=50") == \
        "arith test: 50/50 reference answers pass (100.0%)"


@pytest.mark.parametrize("task", ["gsm8k", "math", "mbpp"])
def test_a_benchmark_without_its_data_says_how_to_get_it(tmp_path, task):
    result = run_cli("stage=score_references", f"task={task}", f"task.path={tmp_path / 'missing'}",
                     f"output_dir={tmp_path / 'out'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "huggingface-cli download" in result.stderr.strip().splitlines()[-1]
