"""The documentation keeps up with the code: every module has its API reference entry, the README stays a front
page (at most 15 KB), and the site's navigation lists every page (``mkdocs build --strict`` in CI checks links)."""

from __future__ import annotations

import pkgutil
import re

import yaml

import models
import pipeline
from pipeline.configuration.hydra import PROJECT_ROOT

DOCS = PROJECT_ROOT / "docs"


def modules() -> set[str]:
    found = set()
    for package in (pipeline, models):
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if module.ispkg or module.name.endswith("__main__"):
                continue
            found.add(module.name)
    return found


def test_every_module_has_its_api_reference_entry():
    text = "\n".join(page.read_text() for page in (DOCS / "reference").glob("*.md"))
    listed = set(re.findall(r"^::: ([\w.]+)$", text, re.M))
    assert not modules() - listed, sorted(modules() - listed)
    assert listed - modules() <= {"models", "pipeline.decoding", "pipeline.decoding.eotp", "pipeline.tasks",
                                  "pipeline.stages"}, "an entry names a module that does not exist"


def test_the_readme_is_a_front_page_and_the_navigation_lists_every_page():
    assert len((PROJECT_ROOT / "README.md").read_bytes()) <= 15_000
    config = yaml.safe_load((PROJECT_ROOT / "mkdocs.yml").read_text())

    def pages(entries) -> set[str]:
        found = set()
        for entry in entries:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            found |= pages(value) if isinstance(value, list) else {value}
        return found

    assert pages(config["nav"]) == {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
