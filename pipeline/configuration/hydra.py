"""The project's Hydra configs: where they live, and what must be registered before composing them (the typed
schema, the ``${project_root:}`` resolver)."""

from __future__ import annotations

from omegaconf import OmegaConf

from pipeline.artifacts.store import PROJECT_ROOT

CONF_DIR = PROJECT_ROOT / "conf"


def register() -> None:
    """The typed schema (``schema``) and ``${project_root:}``, which lets configs name shipped files wherever
    the command is run from."""
    from pipeline.configuration.schema import register_schemas

    register_schemas()
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
