"""MATH competition problems (Hendrycks et al. 2021) in the Minerva 4-shot format (Lewkowycz et al. 2022).

Followed: the Minerva paper's prompt (its four fixed problems, each solution ending with ``Final Answer: The final
answer is $X$. I hope it is correct.``) as run by lm-evaluation-harness ``minerva_math``, and the answer
normalisation of Minerva's appendix and the MATH repository (units, spacing, ``\\dfrac``, shorthand fractions,
``x=``); the solutions of the four shots are written here. A shot is
``Problem:\\n{problem}\\n\\nSolution:\\n{solution}``: the solution starts on its own line.

Data: ``EleutherAI/hendrycks_math``, one config per subject; ``all`` concatenates the subjects in the order of
:data:`SUBJECTS`. ``task.path`` may also be a directory with one train and one test file (e.g. ``train.jsonl``,
``test.parquet``) holding every subject, which ``subset`` filters by the ``type`` field. ``validation`` is every 15th
hub train row (500 of the 7,500 for ``all``, every subject in proportion) and ``train`` the rest.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from models.errors import ConfigError, InputError
from pipeline.tasks.base import Example, Task, check_split
from pipeline.tasks.hub import check_path, download_fix, load_split, require_fields

HUB_NAME = "EleutherAI/hendrycks_math"
SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
            "prealgebra", "precalculus")
TYPES = {"algebra": "Algebra", "counting_and_probability": "Counting & Probability", "geometry": "Geometry",
         "intermediate_algebra": "Intermediate Algebra", "number_theory": "Number Theory",
         "prealgebra": "Prealgebra", "precalculus": "Precalculus"}  # the ``type`` field of each subject's rows
VALIDATION_EVERY = 15

SHOTS = (
    (r"Find the domain of the expression $\frac{\sqrt{x-2}}{\sqrt{5-x}}$.",
     r"Both square roots need non-negative arguments, so $x-2 \ge 0$ and $5-x \ge 0$, that is $2 \le x \le 5$. "
     r"The denominator must not vanish either, so $5-x > 0$ and $x < 5$. The domain is therefore "
     r"$\boxed{[2,5)}$." "\n"
     r"Final Answer: The final answer is $[2,5)$. I hope it is correct."),
    (r"If $\det \mathbf{A} = 2$ and $\det \mathbf{B} = 12,$ then find $\det (\mathbf{A} \mathbf{B}).$",
     r"The determinant of a product is the product of the determinants: "
     r"$\det (\mathbf{A} \mathbf{B}) = (\det \mathbf{A})(\det \mathbf{B}) = (2)(12) = \boxed{24}$." "\n"
     r"Final Answer: The final answer is $24$. I hope it is correct."),
    (r"Terrell usually lifts two 20-pound weights 12 times. If he uses two 15-pound weights instead, how many times "
     r"must Terrell lift them in order to lift the same total weight?",
     r"Two 20-pound weights lifted 12 times make $2\cdot 20\cdot 12 = 480$ pounds in all. Two 15-pound weights "
     r"lifted $n$ times make $2\cdot 15\cdot n = 30n$ pounds, so $30n = 480$ and $n = 480/30 = \boxed{16}$." "\n"
     r"Final Answer: The final answer is $16$. I hope it is correct."),
    ("If the system of equations\n\n" r"\begin{align*}" "\n" r"6x-4y&=a,\\" "\n" r"6y-9x &=b." "\n"
     r"\end{align*}has a solution $(x, y)$ where $x$ and $y$ are both nonzero, find $\frac{a}{b},$ assuming $b$ is "
     r"nonzero.",
     r"Multiplying the first equation by $-\frac{3}{2}$ gives $$6y-9x=-\frac{3}{2}a.$$ Its left side is the left "
     r"side of the second equation, so $-\frac{3}{2}a=b$ and $\frac{a}{b}=\boxed{-\frac{2}{3}}$." "\n"
     r"Final Answer: The final answer is $-\frac{2}{3}$. I hope it is correct."),
)
PROMPT_PREFIX = "".join(f"Problem:\n{problem}\n\nSolution:\n{solution}\n\n" for problem, solution in SHOTS)

STATED = "The final answer is"
BOX = re.compile(r"\\(?:boxed|fbox)")
TEXT_COMMAND = r"\\(?:text|textbf|textrm|textit|mbox|mathrm)\s*"
AFTER_NUMBER = r"(?<=[0-9})\]])\s*"  # a unit follows a number, a closing brace or a bracket
POWER = r"(?:\^\{?[23]\}?)?"  # square and cubic units
TEXT_UNIT = re.compile(AFTER_NUMBER + TEXT_COMMAND + r"\{[a-zA-Z. ]*\}" + POWER + r"\s*$")
UNIT_WORDS = ("units", "unit", "degrees", "degree", "centimeters", "cm", "meters", "km", "inches", "inch", "feet",
              "foot", "ft", "miles", "mph", "hours", "hour", "minutes", "seconds", "days", "dollars", "cents",
              "pounds", "ways", "points")
UNIT_WORD = re.compile(AFTER_NUMBER + r"(?:(?:square|sq\.?|cubic)\s*)?(?:" + "|".join(UNIT_WORDS) + ")" + POWER
                       + r"\s*$")
VARIABLE_PREFIX = re.compile(r"\s*(?:[a-zA-Z]|\\[a-zA-Z]+)\s*=(.+)", re.DOTALL)


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` or ``\\fbox{...}`` (braces balanced) or ``\\boxed 5``; None when
    there is none or its braces never close."""
    starts = [match.end() for match in BOX.finditer(text)]
    if not starts:
        return None
    rest = text[starts[-1]:]
    if rest.startswith("{"):
        depth = 0
        for at, char in enumerate(rest):
            depth += {"{": 1, "}": -1}.get(char, 0)
            if depth == 0:
                return rest[1:at]
        return None
    bare = re.match(r"\s+([^\s$]+)", rest)
    return bare.group(1) if bare else None


def stated_answer(text: str) -> str | None:
    """What follows the last "The final answer is", up to "I hope it is correct" or the end of that line."""
    at = text.rfind(STATED)
    if at < 0:
        return None
    rest = text[at + len(STATED):].split("I hope it is correct", 1)[0].strip().lstrip(":").strip()
    return rest.split("\n", 1)[0].strip().rstrip(".").strip() or None


def normalise_answer(answer: str) -> str:
    """A canonical string for an answer, so that notation alone never decides a match."""
    text = answer.strip()
    boxed = last_boxed(text) if BOX.search(text) else None
    text = (boxed if boxed is not None else text).replace("\n", " ")
    text = text.replace("\\$", "").replace("$", "")
    text = re.sub(r"\\(?:left|right)(?![a-zA-Z])", "", text)
    text = re.sub(r"(?<!\\)\\[!,;: ]", "", text)  # spacing commands
    text = re.sub(r"(?:\{\})?\^\s*(?:\{\s*\\circ\s*\}|\\circ)|°|\\?%", "", text)
    text = re.sub(r"\\[dt]frac(?![a-zA-Z])", r"\\frac", text)
    while TEXT_UNIT.search(text) or UNIT_WORD.search(text):
        text = UNIT_WORD.sub("", TEXT_UNIT.sub("", text))
    text = re.sub(TEXT_COMMAND + r"\{([^{}]*)\}", r"\1", text)
    prefixed = VARIABLE_PREFIX.fullmatch(text)
    text = re.sub(r"\s+", "", prefixed.group(1) if prefixed else text).rstrip(".")
    text = re.sub(r"\\frac([0-9a-zA-Z])", r"\\frac{\1}", text)
    text = re.sub(r"\\frac(\{[^{}]*\})([0-9a-zA-Z])", r"\\frac\1{\2}", text)
    text = re.sub(r"\\sqrt([0-9a-zA-Z])", r"\\sqrt{\1}", text)
    slash = re.fullmatch(r"(-?)([0-9]+)/([0-9]+)", text)
    if slash:
        text = f"{slash.group(1)}\\frac{{{slash.group(2)}}}{{{slash.group(3)}}}"
    text = re.sub(r"(?<![0-9a-zA-Z}])\.([0-9])", r"0.\1", text)
    if re.fullmatch(r"-?[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?", text):
        text = text.replace(",", "")
    if re.fullmatch(r"-?[0-9]+\.[0-9]+", text):
        text = text.rstrip("0").rstrip(".")
    return text


class MATH(Task):
    name = "math"
    stop_strings = ("Problem:", "</s>", "<|im_end|>", "I hope it is correct.")

    def __init__(self, path: str | None = None, subset: str = "all") -> None:
        if subset != "all" and subset not in SUBJECTS:
            raise ConfigError("task.subset", subset, f"allowed: all, {', '.join(SUBJECTS)}")
        self.path, self.subset = path, subset

    def check(self) -> None:
        check_path(self.path, "task.path", HUB_NAME)

    @functools.cache  # noqa: B019 - a handful of small task objects per process
    def rows(self, split: str) -> list[dict[str, str]]:
        """The raw rows of one of this task's splits, in hub order."""
        check_split(split)
        rows = self.hub_rows("test" if split == "test" else "train")
        if split == "test":
            return rows
        return [row for index, row in enumerate(rows)
                if (index % VALIDATION_EVERY == VALIDATION_EVERY - 1) == (split == "validation")]

    def hub_rows(self, hub_split: str) -> list[dict[str, str]]:
        fix, source = download_fix(HUB_NAME, "task.path"), self.path or HUB_NAME
        subjects = SUBJECTS if self.subset == "all" else (self.subset,)
        if self.path is None or any((Path(self.path) / subject).is_dir() for subject in SUBJECTS):
            rows = [row for subject in subjects
                    for row in load_split(self.path, HUB_NAME, subject, hub_split, "task.path")]
            require_fields(rows, ("problem", "solution"), source, fix)
            return rows
        rows = load_split(self.path, HUB_NAME, None, hub_split, "task.path")
        require_fields(rows, ("problem", "solution") + (("type",) if self.subset != "all" else ()), source, fix)
        rows = [row for row in rows if self.subset == "all" or row["type"] == TYPES[self.subset]]
        if not rows:
            raise InputError(source, f"its {hub_split} split has no row of type {TYPES[self.subset]!r}", fix)
        return rows

    def split_size(self, split: str) -> int:
        return len(self.rows(split))

    def examples(self, split: str, n: int) -> list[Example]:
        self.check_count(split, n)
        return [self.example(row) for row in self.rows(split)[:n]]

    @staticmethod
    def example(row: dict[str, str]) -> Example:
        """A reference solution without a boxed answer gets the final answer "", which nothing extracted equals."""
        solution = row["solution"].strip()
        return Example(prompt=f"{PROMPT_PREFIX}Problem:\n{row['problem']}\n\nSolution:", answer=solution,
                       final=normalise_answer(last_boxed(solution) or ""))

    def extract_final(self, text: str) -> str | None:
        """The stated final answer, else the last boxed one, normalised."""
        raw = stated_answer(text)
        raw = raw if raw is not None else last_boxed(text)
        return (normalise_answer(raw) or None) if raw is not None else None
