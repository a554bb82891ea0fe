"""Things with weights: the embedded masked-diffusion LM, its tokenizer, the filter networks, the native LLaDA and
Dream; and the torch-free vocabulary every layer shares (:mod:`models.errors`) with the readers of the files a user
points at (:mod:`models.files`, :mod:`models.saved_files`), which the command line checks before torch loads.

So the package imports nothing heavy itself: importing :mod:`models.diffusion_lm` (or naming ``models.DiffusionLM``)
registers the embedded model with ``AutoConfig``/``AutoModel``, so that ``AutoModel.from_pretrained(dir)`` loads a
saved checkpoint offline.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DiffusionLM", "DiffusionLMConfig"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from models import diffusion_lm

        return getattr(diffusion_lm, name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")
