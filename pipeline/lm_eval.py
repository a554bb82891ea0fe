"""``python -m pipeline.lm_eval ARGS``: lm-evaluation-harness's own command line (``lm_eval ARGS``, every option
as it documents them) with the project's ``learn2pd`` model registered, offline unless ``--allow_download``.

After lm-eval's results, the speed of each task's decodes is printed (mean NFE, generated tokens per second) and,
with ``--output_path``, written beside lm-eval's results file as ``learn2pd_speed.json``. Hub datasets are read from
the local hub cache (or a task's local ``dataset_path``); a missing one is one line naming it and the command that
fetches it.
"""

from __future__ import annotations

import json
import sys
from contextlib import nullcontext
from pathlib import Path

from pipeline.errors import InputError

ALLOW_DOWNLOAD = "--allow_download"


def speed_table(speed: dict[str, dict[str, float]]) -> str:
    lines = ["| task | samples | NFE (mean) | generated tokens | tokens/s |", "|---|---|---|---|---|"]
    for task, s in sorted(speed.items()):
        lines.append(f"| {task} | {s['samples']} | {s['nfe_mean']:.1f} | {s['tokens']} | {s['tokens_per_s']:.1f} |")
    return "\n".join(lines)


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


def output_folder(argv: list[str]) -> Path | None:
    for i, arg in enumerate(argv):
        if arg in ("--output_path", "-o") and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--output_path="):
            return Path(arg.split("=", 1)[1])
    return None


def main(argv: list[str] | None = None) -> None:
    from pipeline.cli import COMPOSING, errors_reported
    from pipeline.tasks.hub import offline

    argv = list(sys.argv[1:] if argv is None else argv)
    allow_download = ALLOW_DOWNLOAD in argv
    argv = [a for a in argv if a != ALLOW_DOWNLOAD]
    with errors_reported((*COMPOSING, FloatingPointError)):
        from lm_eval.__main__ import cli_evaluate

        import pipeline.lm_eval_model as harness  # registers the learn2pd model

        sys.argv = ["lm_eval", *argv]
        try:
            with nullcontext() if allow_download else offline():
                cli_evaluate()
        except (OSError, ValueError, RuntimeError) as error:
            user = missing_dataset(error)
            if user is None:
                raise
            raise user from error
    lm = harness.Learn2PDLM.last
    if lm is None or not lm.speed():
        return
    print("\nlearn2pd decoding speed (generated tokens only):")
    print(speed_table(lm.speed()))
    folder = output_folder(argv)
    if folder is not None:  # beside lm-eval's newest results file (it writes into a folder named after the model)
        results = sorted(folder.rglob("results_*.json"), key=lambda p: p.stat().st_mtime)
        folder = results[-1].parent if results else folder
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / "learn2pd_speed.json"
        partial = target.with_suffix(".json.partial")
        partial.write_text(json.dumps({"model": lm.name, "decode": lm.settings.identity(), "speed": lm.speed()},
                                      indent=2))
        partial.replace(target)


if __name__ == "__main__":
    main()
