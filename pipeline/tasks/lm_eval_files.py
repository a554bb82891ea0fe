"""lm-eval's task files read as lm-eval reads them, without importing its task package (pandas, datasets and its
index of every task: seconds): a file with its ``include:`` files merged, the names it registers, and lm-eval's
built-in task files scanned as text for the files that may name a task. The lm-eval entry point resolves
``--tasks`` with them; the pre-flight reads an ``task=lm_eval`` task's declared splits."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any

from models.errors import InputError, UserError, first_line

TASK_FILE_FIX = "fix the file (lm-eval skips a task file it cannot read)"
# A task file's names, read as text: ``task:``/``group:``/``tag:`` (keys quoted or not) with one value, a flow list
# or a block list; ``include:`` the same. Used on lm-eval's built-in task files only (see scan_builtin).
TASK_KEYS = re.compile(r"""^[ \t]*(?:-[ \t]+)?["']?(?:task|group|tag)["']?[ \t]*:[ \t]*([^\n#]*)"""
                       r"""((?:\n[ \t]*-[ \t]+[^\n]*)*)""", re.M)
INCLUDE_KEY = re.compile(r"""^["']?include["']?[ \t]*:[ \t]*([^\n#]*)((?:\n[ \t]*-[ \t]+[^\n]*)*)""", re.M)
OTHER_KEY = re.compile(r"""^[ \t]*(?:-[ \t]+)?["']?([\w.-]+)["']?[ \t]*:(?:[ \t]|$)""")  # a line ``key: ...``
IGNORED_FOLDERS = {"__pycache__", ".ipynb_checkpoints"}  # as lm-eval's task index skips them
WILDCARD = re.compile(r"(\*|\?|\[!?\]?[^\]]*\])")  # fnmatch's, as lm-eval matches --tasks against its names


def yaml_loader(folder: Path) -> type:
    """lm-eval's YAML loader for task files (``lm_eval/tasks/_yaml_loader.py``, which cannot be imported without its
    task package, pandas and datasets: seconds), ``!function`` left a path as its index leaves it."""
    import yaml

    class Loader(yaml.CSafeLoader if getattr(yaml, "__with_libyaml__", False) else yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: str(folder / loader.construct_scalar(node)))
    return Loader


def read_task_file(path: Path, including: frozenset[Path] = frozenset()) -> dict[str, Any]:
    """A task file as lm-eval's index reads it: its ``include:`` files merged beneath its own keys. A broken one is
    named (the file an error is in), a YAML error with its line."""
    import yaml

    path = path.expanduser().resolve()
    if path in including:
        raise InputError(path, "includes itself", TASK_FILE_FIX)
    try:
        with path.open("rb") as stream:
            cfg = yaml.load(stream, Loader=yaml_loader(path.parent))  # noqa: S506  (a safe loader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = f"line {mark.line + 1}: " if mark is not None else ""
        raise InputError(path, f"not valid YAML ({line}{error.problem or first_line(error)})", TASK_FILE_FIX) \
            from error
    except (OSError, yaml.YAMLError) as error:
        raise InputError(path, f"cannot be read ({first_line(error)})", TASK_FILE_FIX) from error
    if not isinstance(cfg, dict):
        raise InputError(path, f"not a task file (a {type(cfg).__name__}, not a mapping)", TASK_FILE_FIX)
    includes = cfg.pop("include", None)
    merged: dict[str, Any] = {}
    for included in [] if includes is None else includes if isinstance(includes, list) else [includes]:
        base = read_task_file(path.parent / str(included), including | {path})  # an absolute path stays itself
        base.pop("task_list", None)
        merged.update(base)
    return {**merged, **cfg}


def names_of(cfg: dict[str, Any]) -> set[str]:
    """The names lm-eval's index registers for one task file (``lm_eval/tasks/_index.py``): a task (``class:`` or
    ``task:``) with its tags, or a group."""
    if "class" in cfg or ("task" in cfg and "group" not in cfg):
        tags = cfg.get("tag") or []
        names = [cfg.get("task"), *([tags] if isinstance(tags, str) else tags)]
    else:
        names = [cfg.get("group")]
    return {name for name in names if isinstance(name, str)}


def task_files(root: Path, pattern: str = "**/*.yaml") -> list[Path]:
    return sorted(p for p in root.glob(pattern) if not IGNORED_FOLDERS & set(p.parts))


def index_folders(roots: list[str]) -> tuple[list[tuple[Path, dict[str, Any]]], list[tuple[Path, InputError]]]:
    """The task files under ``--include_path`` as lm-eval's index reads them; the files it would skip."""
    read, broken = [], []
    for root in roots:
        for path in task_files(Path(root)):
            try:
                read.append((path, read_task_file(path)))
            except InputError as error:
                broken.append((path, error))
    return read, broken


def listed(match: re.Match) -> list[str]:
    """The values of a ``key: a``, ``key: [a, b]`` or ``key:`` + ``- a`` lines match of TASK_KEYS/INCLUDE_KEY."""
    inline = match.group(1).strip().strip("[]").split(",")
    block = [line.split("-", 1)[1].split("#")[0] for line in match.group(2).splitlines() if line.strip()]
    return [v.strip().strip("'\"") for v in inline + block if v.strip().strip("'\"")]


def as_regex(name: str) -> str:
    """A task name or an fnmatch pattern as a regular expression that finds at least every name it matches (each
    wildcard, ``*``, ``?`` or ``[seq]``, any run of characters or any one: only candidates are looked for)."""
    return "".join((".*" if part == "*" else ".") if WILDCARD.fullmatch(part) else re.escape(part)
                   for part in WILDCARD.split(name))


def said_as_name(text: str, word: re.Pattern) -> bool:
    """Whether ``word`` stands in the text where a name may: on a line of a task, group or tag key, or on a line
    that is no ``key: value`` at all (a list item, a continued value), not as another key's value."""
    for line in text.splitlines():
        if word.search(line):
            key = OTHER_KEY.match(line)
            if key is None or key.group(1) in ("task", "group", "tag"):
                return True
    return False


def scan_builtin(wanted: list[str]) -> tuple[set[str], dict[str, set[str]], dict[str, set[str]]]:
    """lm-eval's built-in task files read as text, with the files they include (about a second; its index parses
    them all as YAML, several): every name they may register (a superset of its index), the files that may name
    each of ``wanted`` (:func:`said_as_name`; a name may be a glob pattern), and which files include each included
    one. Paths as normalised strings: resolving each would double the time."""
    import lm_eval

    words = {name: re.compile(rf"(?<![\w.-]){as_regex(name)}(?![\w.-])") for name in wanted}
    chunks = {name: max(WILDCARD.split(name)[::2], key=len) for name in wanted}  # a quick test before the regex
    names: set[str] = set()
    mentions: dict[str, set[str]] = {name: set() for name in wanted}
    includers: dict[str, set[str]] = {}
    seen: set[str] = set()
    todo = [os.path.join(folder, name) for folder, subfolders, files in os.walk(Path(lm_eval.__file__).parent / "tasks")
            if not IGNORED_FOLDERS & set(Path(folder).parts) for name in files if name.endswith(".yaml")]
    while todo:
        path = todo.pop()
        if path in seen or not os.path.isfile(path):
            continue
        seen.add(path)
        with open(path, encoding="utf-8", errors="replace") as stream:
            text = stream.read()
        names.update(value for match in TASK_KEYS.finditer(text) for value in listed(match))
        for name, word in words.items():
            if chunks[name] in text and said_as_name(text, word):
                mentions[name].add(path)
        for match in INCLUDE_KEY.finditer(text):
            for value in listed(match):
                included = os.path.normpath(os.path.join(os.path.dirname(path), value))
                includers.setdefault(included, set()).add(path)
                todo.append(included)
    return names, mentions, includers


def registered_in(files: set[str], includers: dict[str, set[str]]) -> set[str]:
    """The names lm-eval's index registers from these files and every task file including them (a name can only
    come from a file that says it or includes one that does)."""
    todo, closure = list(files), set()
    while todo:
        path = todo.pop()
        if path not in closure:
            closure.add(path)
            todo += includers.get(path, ())
    names: set[str] = set()
    for path in sorted(p for p in closure if p.endswith(".yaml")):
        with contextlib.suppress(UserError):  # lm-eval skips what it cannot read
            names |= names_of(read_task_file(Path(path)))
    return names


ALLOW_DOWNLOAD = "--allow_download"


def missing_dataset(error: BaseException) -> InputError | None:
    """A dataset lm-eval could not read offline, as the one line that says how to get it."""
    text = str(error)
    offline = ("offline" in text.lower() or "couldn't find" in text.lower() or "doesn't exist on the hub" in
               text.lower() or type(error).__name__ in ("DatasetNotFoundError", "LocalEntryNotFoundError"))
    if not offline:
        return None
    name = next((word.strip("'\".,") for word in text.split() if "/" in word.strip("'\".,")), "the task's dataset")
    return InputError(name, "the dataset is not available offline",
                      f"fetch it with `huggingface-cli download {name} --repo-type dataset`, or rerun with "
                      f"{ALLOW_DOWNLOAD}")
