"""Things with weights: the embedded masked-diffusion LM, its tokenizer, the filter networks.

Importing this package registers the embedded model with ``AutoConfig``/``AutoModel`` so that
``AutoModel.from_pretrained(dir)`` loads a saved checkpoint offline.
"""

from transformers import AutoConfig, AutoModel

from models.diffusion_lm import DiffusionLM, DiffusionLMConfig

AutoConfig.register(DiffusionLMConfig.model_type, DiffusionLMConfig, exist_ok=True)
AutoModel.register(DiffusionLMConfig, DiffusionLM, exist_ok=True)

__all__ = ["DiffusionLM", "DiffusionLMConfig"]
