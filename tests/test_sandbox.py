"""The sandbox contains hostile programs and the code tasks score through it: HumanEval's canonical solutions pass,
wrong or hostile ones fail without harming this process, its files or the machine."""

from __future__ import annotations

import os
import socket
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from models.errors import ConfigError, InputError
from pipeline.tasks import sandbox
from pipeline.tasks.code import MBPP, HumanEval
from pipeline.tasks.sandbox import OUTPUT_LIMIT, run_python

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT,
                                reason="without root a program runs as the caller (see pipeline/tasks/sandbox.py)")


def session_members(session: int) -> list[tuple[int, str]]:
    """(pid, state letter) of every process, zombies included, in a session."""
    members = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session:
            members.append((int(entry), fields[0]))
    return members


def state(pid: int) -> str:
    """A process's state letter, or "gone"."""
    try:
        return next(line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                    if line.startswith("State:"))
    except OSError:
        return "gone"


@pytest.fixture(scope="module")
def humaneval() -> HumanEval:
    return HumanEval()


def test_all_canonical_humaneval_solutions_pass(humaneval):
    examples = humaneval.examples("test", humaneval.split_size("test"))
    started = time.monotonic()
    scores = humaneval.score_many(examples, [example.answer for example in examples])
    print(f"164 canonical solutions scored in {time.monotonic() - started:.1f} s")
    assert len(examples) == 164
    assert [example.final for example in examples if not example.final.startswith("HumanEval/")] == []
    assert [example.final for example, score in zip(examples, scores) if not score.exact_match] == []
    assert all(score.full_match for score in scores)


def test_humaneval_has_only_a_test_split(humaneval):
    assert humaneval.split_size("train") == humaneval.split_size("validation") == 0
    with pytest.raises(ConfigError, match=r"^split=train: allowed: test"):
        humaneval.examples("train", 1)


@pytest.mark.parametrize("source, status", [
    ("raise SystemExit(3)", "failed"),
    ("while True:\n    pass\n", "timeout"),
    ("import time\ntime.sleep(600)\n", "timeout"),  # no CPU spent: only the wall-clock limit ends it
    ("x = bytearray(8 * 1024 ** 3)\n", "failed"),
    ("chunks = []\nwhile True:\n    chunks.append(bytearray(64 << 20))\n", "failed"),
    ("print('x' * 10 ** 8)\n", "failed"),  # past the file size limit on its stdout
], ids=["exit-code", "busy-loop", "sleep", "memory-8GB", "memory-growing", "huge-output"])
def test_runaway_programs_are_stopped(source, status):
    timeout_s = 2 if status == "timeout" else 20  # another limit must end the rest, even on a busy machine
    started = time.monotonic()
    result = run_python(source, timeout_s=timeout_s)
    assert result.status == status, result
    assert time.monotonic() - started < timeout_s + 2
    assert len(result.stdout) < OUTPUT_LIMIT + 100 and len(result.stderr) < OUTPUT_LIMIT + 100


def test_wrong_and_hostile_completions_score_as_failures():
    task = HumanEval(sandbox_timeout_s=1)
    example = task.examples("test", 1)[0]
    wrong, hang = "    return False\n", "```python\nwhile True:\n    pass\n```"
    started = time.monotonic()
    scores = task.score_many([example, example], [wrong, hang])
    assert not any(score.exact_match or score.full_match for score in scores)
    assert time.monotonic() - started < 1 + 2


def test_fork_bomb_is_contained_and_cleaned_up():
    bomb = ("import os\nprint(os.getsid(0), flush=True)\nwhile True:\n    try:\n        os.fork()\n"
            "    except OSError:\n        pass\n")
    result = run_python(bomb, timeout_s=3)
    assert result.status == "timeout"
    session = int(result.stdout.split()[0])
    assert [pid for pid, letter in session_members(session) if letter not in "ZX"] == []
    deadline = time.monotonic() + 15  # the killed processes wait for init to reap them
    while session_members(session) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert session_members(session) == []
    assert run_python("import os\nos.wait() if os.fork() else None\n").status == "passed"  # forking works again


@needs_root
def test_a_child_that_left_the_session_is_killed():
    escape = "import os, time\nchild = os.fork()\nif child == 0:\n    os.setsid()\n    time.sleep(600)\nprint(child)\n"
    result = run_python(escape, timeout_s=5)
    assert result.status == "passed"
    assert state(int(result.stdout)) in ("Z", "X", "gone")


@pytest.fixture(scope="module")
def own_network_namespace() -> bool:
    """Whether programs here get a network namespace of their own (root, or unprivileged user namespaces)."""
    result = run_python("import os\nprint(os.readlink('/proc/self/ns/net'))\n")
    return result.stdout.strip() != os.readlink("/proc/self/ns/net")


@pytest.mark.parametrize("layers", ["namespace+seccomp", "namespace", "seccomp"])
def test_network_is_unreachable(layers, monkeypatch, own_network_namespace):
    if layers == "namespace":
        if not own_network_namespace:
            pytest.skip("the kernel refuses network namespaces here")
        monkeypatch.setattr(sandbox, "_seccomp_program", lambda: None)
    if layers == "seccomp":
        if sandbox._seccomp_program() is None:
            pytest.skip("no seccomp filter for this architecture")
        monkeypatch.setattr(sandbox, "_namespace_flags", lambda: 0)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(0.2)
        port = listener.getsockname()[1]
        for address in (("127.0.0.1", port), ("1.1.1.1", 53)):
            source = f"import socket\nsocket.create_connection({address!r}, timeout=3)\nprint('connected')\n"
            result = run_python(source, timeout_s=5)
            assert result.status == "failed" and "connected" not in result.stdout, result
        with pytest.raises(TimeoutError):
            listener.accept()


def test_network_is_reachable_with_both_layers_off(monkeypatch):
    """The check above is not vacuous: without the two layers the same program connects."""
    monkeypatch.setattr(sandbox, "_seccomp_program", lambda: None)
    monkeypatch.setattr(sandbox, "_namespace_flags", lambda: 0)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        source = f"import socket\nsocket.create_connection(('127.0.0.1', {listener.getsockname()[1]}), timeout=3)\n"
        assert run_python(source).status == "passed"


@pytest.fixture
def callers_files(tmp_path):
    """Files of the caller: one in pytest's private tmp_path, one in a directory everyone may read."""
    private = tmp_path / "private.txt"
    private.write_text("original")
    shared_dir = Path(tempfile.mkdtemp())
    shared_dir.chmod(0o755)
    shared = shared_dir / "shared.txt"
    shared.write_text("original")
    shared.chmod(0o644)
    yield private, shared
    shared.unlink(missing_ok=True)
    shared_dir.rmdir()


@needs_root
def test_callers_files_cannot_be_written_created_or_deleted(callers_files):
    private, shared = callers_files
    created = [private.parent / "created.txt", shared.parent / "created.txt"]
    source = (f"import os\ndone = []\nfor path in {[str(p) for p in (private, shared, *created)]!r}:\n"
              "    try:\n        open(path, 'w').write('pwned')\n        done.append(path)\n    except OSError:\n"
              "        pass\n"
              f"for path in {[str(private), str(shared)]!r}:\n"
              "    try:\n        os.remove(path)\n        done.append(path)\n    except OSError:\n        pass\n"
              "print(done)\nraise SystemExit(0 if done else 1)\n")
    result = run_python(source)
    assert result.status == "failed", result
    assert private.read_text() == shared.read_text() == "original"
    assert not any(path.exists() for path in created)


def test_the_callers_environment_is_not_passed_on(monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "hunter2-do-not-leak")
    source = "import os\nprint(dict(os.environ))\nraise SystemExit(0 if 'hunter2' in repr(os.environ) else 1)\n"
    result = run_python(source)
    assert result.status == "failed"
    assert "hunter2" not in result.stdout and "SECRET_TOKEN" not in result.stdout


@needs_root
def test_the_callers_environment_cannot_be_read_through_proc():
    source = ("import os\ntry:\n    leaked = open(f'/proc/{os.getppid()}/environ', 'rb').read()\n"
              "except OSError:\n    raise SystemExit(1)\nprint(len(leaked))\n")
    assert run_python(source).status == "failed"


@needs_root
def test_files_left_in_shared_temp_dirs_are_removed():
    leftovers = [Path(folder) / f"sandbox-test-{uuid.uuid4().hex}" for folder in ("/tmp", "/dev/shm")]
    source = "".join(f"open({str(path)!r}, 'w').write('x')\n" for path in leftovers) + "import os\n" + "".join(
        f"assert os.path.exists({str(path)!r})\n" for path in leftovers)
    assert run_python(source).status == "passed"
    assert not any(path.exists() for path in leftovers)


@pytest.mark.parametrize("ending", ["raise SystemExit(0)", "while True:\n    pass"], ids=["exit", "killed"])
def test_sandbox_runs_in_a_fresh_directory_removed_afterwards(ending):
    source = ("import os, tempfile\nassert os.getcwd() == os.environ['HOME'] == tempfile.gettempdir()\n"
              f"open('scratch.txt', 'w').write('ok')\nprint(os.getcwd(), flush=True)\n{ending}\n")
    result = run_python(source, timeout_s=2)
    assert result.status == ("passed" if "Exit" in ending else "timeout"), result
    assert not Path(result.stdout.strip()).exists()


# HumanEval extraction

def test_fenced_block_with_the_full_function_replaces_the_prompts_function(humaneval):
    example = humaneval.examples("test", 11)[10]  # make_palindrome, whose prompt also defines is_palindrome
    function = "def make_palindrome(string: str) -> str:\n" + example.answer
    generated = f"Here is the solution:\n```python\n{function}```\nIt appends the reversed prefix."
    code = humaneval.extract_code(example, generated)
    assert code.count("def make_palindrome") == 1 and "def is_palindrome" in code
    assert humaneval.score(example, generated).exact_match


def test_fenced_block_with_only_the_body_completes_the_prompt(humaneval):
    example = humaneval.examples("test", 1)[0]
    generated = f"```python\n{example.answer}```"
    assert humaneval.extract_code(example, generated) == example.prompt + example.answer
    score = humaneval.score(example, generated)
    assert score.exact_match and score.full_match


@pytest.mark.parametrize("junk", ["\n\ndef unused():\n    raise SystemExit(1)\n",
                                  "\nprint(1 / 0)\n",
                                  "\nif __name__ == '__main__':\n    raise SystemExit(1)\n",
                                  "\n```\nThat is the whole function."])
def test_raw_completion_is_cut_at_top_level_code(humaneval, junk):
    example = humaneval.examples("test", 1)[0]
    generated = example.answer + junk
    assert humaneval.extract_code(example, generated).rstrip() == (example.prompt + example.answer).rstrip()
    score = humaneval.score(example, generated)
    assert score.exact_match and score.full_match


# MBPP on a small local copy in the hub's layout

def mbpp_row(task_id: int, text: str, code: str, tests: list[str], setup: str = "") -> dict:
    return {"task_id": task_id, "text": text, "code": code, "test_list": tests, "test_setup_code": setup,
            "challenge_test_list": []}


ADD = mbpp_row(2, "Write a function to add two numbers.", "def add(a, b):\r\n    return a + b",
               ["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(-1, 1) == 0"])
SUB = mbpp_row(3, "Write a function to subtract two numbers.", "def sub(a, b):\n    return a - b",
               ["assert sub(3, 2) == 1", "assert sub(0, 0) == 0", "assert sub(1, 1) == 0"])
MUL = mbpp_row(4, "Write a function to multiply two numbers.", "def mul(a, b):\n    return a * b",
               ["assert mul(3, 2) == 6", "assert mul(0, 5) == 0", "assert mul(1, 1) == 1"])
DECOY = mbpp_row(1, "Write a function that is never shown.", "def never():\n    pass", ["assert never() is None"])
HYPOT = mbpp_row(11, "Write a function to find the hypotenuse.", "def hypot(a, b):\n    return sqrt(a * a + b * b)",
                 ["assert hypot(3, 4) == 5.0", "assert hypot(5, 12) == 13.0"], setup="from math import sqrt")
SQUARE = mbpp_row(12, "Write a function to square a number.", "def square(x):\n    return x * x",
                  ["assert square(3) == 9", "assert square(-2) == 4", "assert square(0) == 0"])
TRAIN = [mbpp_row(601 + i, f"Write a function returning {i}.", f"def f():\n    return {i}", [f"assert f() == {i}"])
         for i in range(4)]


def write_mbpp(folder: Path, prompt_rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    splits = {"prompt": prompt_rows, "test": [HYPOT, SQUARE], "validation": [TRAIN[3]], "train": TRAIN[:3]}
    (folder / "full").mkdir(parents=True)
    for split, rows in splits.items():
        pq.write_table(pa.Table.from_pylist(rows), folder / "full" / f"{split}-00000-of-00001.parquet")
    return folder


def test_mbpp_prompt_has_the_harness_format(tmp_path):
    task = MBPP(path=str(write_mbpp(tmp_path, [DECOY, ADD, SUB, MUL])))
    task.check()
    assert [task.split_size(split) for split in ("train", "validation", "test")] == [3, 1, 2]
    example = task.examples("test", 1)[0]
    head = "You are an expert Python programmer, and here is your task: "
    assert example.prompt == (
        f"{head}Write a function to add two numbers. Your code should pass these tests:\n\n"
        "assert add(1, 2) == 3\nassert add(0, 0) == 0\nassert add(-1, 1) == 0\n[BEGIN]\n"
        "def add(a, b):\r\n    return a + b\n[DONE]\n\n"
        f"{head}Write a function to subtract two numbers. Your code should pass these tests:\n\n"
        "assert sub(3, 2) == 1\nassert sub(0, 0) == 0\nassert sub(1, 1) == 0\n[BEGIN]\n"
        "def sub(a, b):\n    return a - b\n[DONE]\n\n"
        f"{head}Write a function to multiply two numbers. Your code should pass these tests:\n\n"
        "assert mul(3, 2) == 6\nassert mul(0, 5) == 0\nassert mul(1, 1) == 1\n[BEGIN]\n"
        "def mul(a, b):\n    return a * b\n[DONE]\n\n"
        f"{head}Write a function to find the hypotenuse. Your code should pass these tests:\n\n"
        "assert hypot(3, 4) == 5.0\nassert hypot(5, 12) == 13.0\n[BEGIN]\n")
    assert (example.answer, example.final) == (HYPOT["code"], "11")


def test_mbpp_shots_fall_back_to_the_first_train_rows(tmp_path):
    task = MBPP(path=str(write_mbpp(tmp_path, [DECOY])))
    prompt = task.examples("test", 1)[0].prompt
    assert [f"return {i}\n[DONE]" in prompt for i in range(4)] == [True, True, True, False]


def test_mbpp_reference_code_passes_and_wrong_code_fails(tmp_path):
    task = MBPP(path=str(write_mbpp(tmp_path, [ADD, SUB, MUL])))
    examples = task.examples("test", 2)
    right = [f"{example.answer}\n[DONE]\n\nYou are an expert" for example in examples]  # needs the setup code
    wrong = ["def hypot(a, b):\n    return a + b\n[DONE]", "```python\ndef square(x):\n    return 2 * x\n```"]
    assert [(s.exact_match, s.full_match) for s in task.score_many(examples, right)] == [(True, True)] * 2
    assert [(s.exact_match, s.full_match) for s in task.score_many(examples, wrong)] == [(False, False)] * 2


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_mbpp_without_data_names_the_fix(tmp_path, make):
    path = tmp_path / "mbpp"
    if make == "empty":
        path.mkdir()
    with pytest.raises(InputError) as error:
        MBPP(path=str(path)).check()
    assert str(path) in str(error.value)
    assert "huggingface-cli download google-research-datasets/mbpp --repo-type dataset" in str(error.value)
    assert "task.path=DIR" in str(error.value)


def test_code_task_settings_are_checked():
    with pytest.raises(ConfigError, match="task.sandbox_timeout_s"):
        HumanEval(sandbox_timeout_s=0)
    with pytest.raises(ConfigError, match="task.workers"):
        MBPP(workers=0)
