"""Tiny random stand-ins for hub masked-diffusion LLMs, written in the hub's remote-code layout.

The real LLaDA-8B-Instruct and Dream-v0-Instruct-7B cannot be downloaded in tests, yet the project loads them through
``AutoModel.from_pretrained(path, trust_remote_code=True)`` and calls them the way their remote code expects. These
writers produce directories that take the same path, with the real special-token ids, vocabulary sizes, config field
names, chat templates and forward signatures, and some 20k random weights besides the embedding and head:

    <directory>/
        config.json              auto_map -> the two files below, model_type, vocab_size, mask_token_id, ...
        configuration_llada.py   (configuration_dream.py) the config class; imports only transformers
        modeling_llada.py        (modeling_dream.py) the model class; imports only torch and transformers
        model.safetensors        written by ``save_pretrained``
        tokenizer.json           byte-level tokenizer: the 256 bytes, the special tokens at their real ids and
                                 reserved placeholders for every id between, so ``len(tokenizer)`` exceeds them all
        tokenizer_config.json    tokenizer_class, special tokens, chat_template
        special_tokens_map.json

What each stand-in mimics (and the project must cope with):

* LLaDA-like (``LLaDAConfig``/``LLaDAModelLM``, model_type ``llada``): ``forward(input_ids, inputs_embeds,
  attention_mask, ...)`` with no ``position_ids`` and no ``**kwargs``, so an unknown argument is a ``TypeError``;
  positions are always 0..L-1; attention is bidirectional. ``attention_mask`` [B, L] hides padded keys, except in the
  ``honours_attention_mask=False`` variant, which accepts and ignores it like the older upstream code. The config
  names sizes like upstream (``d_model``, ``n_layers``, ``max_sequence_length``: no ``max_position_embeddings``) and
  carries ``mask_token_id``; the tokenizer has ``<|mdm_mask|>`` as a special token but, like upstream, no
  ``mask_token``. Since rotary positions only enter attention through position differences, a left-padded prompt
  with padded keys hidden gives the same logits on its real tokens as the unpadded prompt.
* Dream-like (``DreamConfig``/``DreamModel``, model_type ``Dream``): ``forward(input_ids, attention_mask,
  position_ids, ..., **loss_kwargs)``, unknown keyword arguments silently absorbed as upstream. ``attention_mask`` is
  None, the string ``"full"`` or a tensor handed to scaled-dot-product attention unchanged, as upstream: Dream's
  sampler passes a boolean [B, 1, L, L] (True = may attend); a 2D [B, L] mask only broadcasts correctly for B = 1.
  ``position_ids`` [B, L] default to 0..L-1. Logits are per position; that position i-1 predicts token i is a
  convention of the decoder, not of the module.

The mask token and every id that is neither a byte nor a special token get a constant logit of -30, far below the
others (which stay within about +-15, like a trained model's), so argmax decoding always makes progress and decodes to
readable bytes. Writing is deterministic in ``seed``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

LLADA_IDS = {"mask": 126336, "eos": 126081, "eot": 126348}
DREAM_IDS = {"mask": 151666, "eos": 151643}

_LLADA_SPECIALS = {
    "<|startoftext|>": 126080,
    "<|endoftext|>": LLADA_IDS["eos"],
    "<|mdm_mask|>": LLADA_IDS["mask"],
    "<|start_header_id|>": 126346,
    "<|end_header_id|>": 126347,
    "<|eot_id|>": LLADA_IDS["eot"],
}
_DREAM_SPECIALS = {
    "<|endoftext|>": DREAM_IDS["eos"],
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|beginoftext|>": 151665,
    "<|mask|>": DREAM_IDS["mask"],
}
_LLADA_TEMPLATE = (
    "{% for message in messages %}{% if loop.first %}{{ bos_token }}{% endif %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
_DREAM_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_UNREACHABLE = -30.0  # far below any reachable logit, yet of a trained model's magnitude

_LLADA_CONFIG_SOURCE = '''"""Configuration of a tiny LLaDA-like model (upstream field names)."""

from transformers import PretrainedConfig


class LLaDAConfig(PretrainedConfig):
    model_type = "llada"

    def __init__(
        self,
        vocab_size: int = 126464,
        embedding_size: int = 126464,
        d_model: int = 32,
        n_heads: int = 2,
        n_layers: int = 2,
        mlp_hidden_size: int = 64,
        max_sequence_length: int = 4096,
        rope_theta: float = 500000.0,
        rms_norm_eps: float = 1e-5,
        mask_token_id: int = 126336,
        honours_attention_mask: bool = True,
        use_cache: bool = False,
        eos_token_id: int = 126081,
        pad_token_id: int = 126081,
        **kwargs,
    ) -> None:
        self.vocab_size = vocab_size
        self.embedding_size = embedding_size
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_layers = n_layers
        self.mlp_hidden_size = mlp_hidden_size
        self.max_sequence_length = max_sequence_length
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.mask_token_id = mask_token_id
        self.honours_attention_mask = honours_attention_mask  # False: the older upstream code, which ignores it
        self.use_cache = use_cache
        kwargs["tie_word_embeddings"] = False
        super().__init__(eos_token_id=eos_token_id, pad_token_id=pad_token_id, **kwargs)
'''

_DREAM_CONFIG_SOURCE = '''"""Configuration of a tiny Dream-like model (Qwen2-style field names, as upstream)."""

from transformers import PretrainedConfig


class DreamConfig(PretrainedConfig):
    model_type = "Dream"

    def __init__(
        self,
        vocab_size: int = 152064,
        hidden_size: int = 32,
        intermediate_size: int = 64,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 2,
        max_position_embeddings: int = 131072,
        rope_theta: float = 1000000.0,
        rms_norm_eps: float = 1e-6,
        mask_token_id: int = 151666,
        bos_token_id: int = 151643,
        eos_token_id: int = 151643,
        pad_token_id: int = 151643,
        **kwargs,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.mask_token_id = mask_token_id
        kwargs["tie_word_embeddings"] = False
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id, **kwargs)
'''

_MODELING_HEADER = '''"""{doc}"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers.modeling_outputs import {output}

from .{config_module} import {config_class}


def refuse(**arguments: object) -> None:
    """Fail loudly on upstream arguments this stand-in does not model, rather than silently differ."""
    for name, value in arguments.items():
        if value is not None and value is not False:
            raise NotImplementedError(f"this tiny stand-in does not support {{name}}")


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return (x.float() * scale).to(x.dtype) * self.weight


def rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x [B, heads, L, head_dim] by angles [B, 1, L, head_dim / 2] (rotate-half layout)."""
    cos = torch.cat((angles.cos(), angles.cos()), dim=-1)
    sin = torch.cat((angles.sin(), angles.sin()), dim=-1)
    first, second = x.float().chunk(2, dim=-1)
    return (x.float() * cos + torch.cat((-second, first), dim=-1) * sin).to(x.dtype)


class Block(nn.Module):
    """Pre-norm bidirectional attention and SwiGLU, as in Llama-family blocks without the causal mask."""

    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.attn_norm = RMSNorm(hidden, eps)
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=False)
        self.attn_out = nn.Linear(hidden, hidden, bias=False)
        self.mlp_norm = RMSNorm(hidden, eps)
        self.gate_up = nn.Linear(hidden, 2 * intermediate, bias=False)
        self.down = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor, angles: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        batch, length, _ = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(rotate(q, angles), rotate(k, angles), v, attn_mask=mask)
        x = x + self.attn_out(attended.transpose(1, 2).reshape(batch, length, -1))
        gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class Backbone(nn.Module):
    """Embedding, blocks, final norm and output head; positions and the attention mask come from the caller."""

    def __init__(self, vocab: int, hidden: int, heads: int, layers: int, intermediate: int, eps: float,
                 theta: float) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.blocks = nn.ModuleList(Block(hidden, heads, intermediate, eps) for _ in range(layers))
        self.norm = RMSNorm(hidden, eps)
        self.head = nn.Linear(hidden, vocab, bias=True)  # the bias keeps the mask token from winning
        self.half_dim = hidden // heads // 2
        self.theta = theta

    def forward(self, embeds: torch.Tensor, positions: torch.Tensor,
                mask: torch.Tensor | None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Final normed states and the hidden states in the transformers convention (embeddings first)."""
        exponents = torch.arange(self.half_dim, dtype=torch.float32, device=embeds.device) / self.half_dim
        angles = (positions.float()[..., None] * self.theta ** -exponents)[:, None]
        states = [embeds]
        for block in self.blocks:
            states.append(block(states[-1], angles, mask))
        states[-1] = self.norm(states[-1])
        return states[-1], tuple(states)
'''

_LLADA_MODEL_SOURCE = '''

class LLaDAModelLM(PreTrainedModel):
    """Masked-diffusion LM with upstream LLaDA's calling convention (positions are implicit)."""

    config_class = LLaDAConfig
    base_model_prefix = "model"
    _no_split_modules = ["Block"]

    def __init__(self, config: LLaDAConfig) -> None:
        super().__init__(config)
        self.model = Backbone(config.embedding_size, config.d_model, config.n_heads, config.n_layers,
                              config.mlp_hidden_size, config.rms_norm_eps, config.rope_theta)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        attention_bias: torch.Tensor | None = None,
        past_key_values: object = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache_position: object = None,
    ) -> CausalLMOutputWithPast | tuple:
        """Logits [B, L, V] at positions 0..L-1; ``attention_mask`` [B, L] (1/True = real) hides padded keys.

        ``cache_position`` is accepted and ignored, as upstream.
        """
        refuse(attention_bias=attention_bias, past_key_values=past_key_values, labels=labels, use_cache=use_cache,
               output_attentions=output_attentions)
        embeds = self.model.embed(input_ids) if inputs_embeds is None else inputs_embeds
        batch, length = embeds.shape[:2]
        positions = torch.arange(length, device=embeds.device).expand(batch, length)
        mask = None
        if attention_mask is not None and self.config.honours_attention_mask:
            if attention_mask.dim() != 2:
                shape = tuple(attention_mask.shape)
                raise ValueError(f"attention_mask must be [batch, seq] (1 = real token), not {shape}")
            mask = attention_mask.bool()[:, None, None, :]
        hidden, states = self.model(embeds, positions, mask)
        output = CausalLMOutputWithPast(logits=self.model.head(hidden),
                                        hidden_states=states if output_hidden_states else None)
        return output.to_tuple() if return_dict is False else output
'''

_DREAM_MODEL_SOURCE = '''

class DreamModel(PreTrainedModel):
    """Masked-diffusion LM with upstream Dream's calling convention (explicit positions and attention mask)."""

    config_class = DreamConfig
    base_model_prefix = "model"
    _no_split_modules = ["Block"]

    def __init__(self, config: DreamConfig) -> None:
        super().__init__(config)
        self.model = Backbone(config.vocab_size, config.hidden_size, config.num_attention_heads,
                              config.num_hidden_layers, config.intermediate_size, config.rms_norm_eps,
                              config.rope_theta)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | str | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: object = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        cache_position: object = None,
        num_logits_to_keep: int = 0,
        **loss_kwargs: object,
    ) -> MaskedLMOutput | tuple:
        """Logits [B, L, V] (the last ``num_logits_to_keep`` positions if set) at ``position_ids`` (default 0..L-1).

        A tensor ``attention_mask`` goes to attention unchanged (boolean [B, 1, L, L], True = may attend, or an
        additive float mask); None or ``"full"`` attends everywhere. ``use_cache``, ``cache_position`` and any other
        keyword arguments are accepted and ignored, as upstream.
        """
        refuse(past_key_values=past_key_values, labels=labels, output_attentions=output_attentions)
        embeds = self.model.embed(input_ids) if inputs_embeds is None else inputs_embeds
        if position_ids is None:
            position_ids = torch.arange(embeds.shape[1], device=embeds.device).expand(embeds.shape[:2])
        mask = attention_mask if isinstance(attention_mask, torch.Tensor) else None
        hidden, states = self.model(embeds, position_ids, mask)
        output = MaskedLMOutput(logits=self.model.head(hidden[:, -num_logits_to_keep:]),
                                hidden_states=states if output_hidden_states else None)
        return output.to_tuple() if return_dict is False else output
'''


def write_llada_like(directory: Path, honours_attention_mask: bool = True, seed: int = 0) -> Path:
    """A tiny LLaDA-8B-Instruct stand-in; ``honours_attention_mask=False`` mimics the older code that ignores it."""
    directory = Path(directory)
    header = _MODELING_HEADER.format(doc="A tiny random LLaDA-like masked-diffusion model for offline tests.",
                                     output="CausalLMOutputWithPast", config_module="configuration_llada",
                                     config_class="LLaDAConfig")
    config = {
        "architectures": ["LLaDAModelLM"],
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM",
                     "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"},
        "model_type": "llada",
        "honours_attention_mask": honours_attention_mask,
    }
    _write_model(directory, "llada", _LLADA_CONFIG_SOURCE, header + _LLADA_MODEL_SOURCE, config, _LLADA_SPECIALS,
                 LLADA_IDS["mask"], seed)
    _write_tokenizer(directory, _LLADA_SPECIALS, _LLADA_TEMPLATE,
                     {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"})
    return directory


def write_dream_like(directory: Path, seed: int = 0) -> Path:
    """A tiny Dream-v0-Instruct-7B stand-in."""
    directory = Path(directory)
    header = _MODELING_HEADER.format(doc="A tiny random Dream-like masked-diffusion model for offline tests.",
                                     output="MaskedLMOutput", config_module="configuration_dream",
                                     config_class="DreamConfig")
    config = {
        "architectures": ["DreamModel"],
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "model_type": "Dream",
    }
    _write_model(directory, "dream", _DREAM_CONFIG_SOURCE, header + _DREAM_MODEL_SOURCE, config, _DREAM_SPECIALS,
                 DREAM_IDS["mask"], seed)
    _write_tokenizer(directory, _DREAM_SPECIALS, _DREAM_TEMPLATE,
                     {"bos_token": "<|beginoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                      "mask_token": "<|mask|>"})
    return directory


def _write_model(directory: Path, name: str, config_source: str, modeling_source: str, config: dict[str, object],
                 specials: dict[str, int], mask_id: int, seed: int) -> None:
    """Write the code and a partial config, build the model through the remote-code path, then save its weights."""
    from transformers import AutoConfig, AutoModel

    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"configuration_{name}.py").write_text(config_source)
    (directory / f"modeling_{name}.py").write_text(modeling_source)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    model = AutoModel.from_config(AutoConfig.from_pretrained(directory, trust_remote_code=True),
                                  trust_remote_code=True)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter_name, parameter in model.named_parameters():
            if parameter_name.endswith("norm.weight"):
                parameter.fill_(1.0)
            elif parameter_name.endswith("embed.weight"):
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
            elif parameter_name.endswith("weight"):  # the head's larger scale gives peaked, varied confidences
                scale = (3.0 if parameter_name.endswith("head.weight") else 1.0) / parameter.shape[1] ** 0.5
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
        head = model.get_submodule("model.head")
        reachable = torch.zeros(head.out_features, dtype=torch.bool)
        reachable[:256] = True
        reachable[list(specials.values())] = True
        reachable[mask_id] = False
        head.weight[~reachable] = 0.0
        head.bias.copy_(torch.where(reachable, 0.0, _UNREACHABLE))
    model.save_pretrained(directory)


def _write_tokenizer(directory: Path, specials: dict[str, int], chat_template: str, roles: dict[str, str]) -> None:
    """Byte-level tokenizer with the specials at their real ids and reserved placeholders for the ids between."""
    vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab.update(specials)
    taken = set(specials.values())
    vocab.update({f"<|reserved_{i}|>": i for i in range(256, max(taken)) if i not in taken})
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(token, special=True, normalized=False)
                             for token in sorted(specials, key=specials.get)])
    core.save(str(directory / "tokenizer.json"))
    settings = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False, **roles,
                "chat_template": chat_template}
    (directory / "tokenizer_config.json").write_text(json.dumps(settings, indent=2))
    (directory / "special_tokens_map.json").write_text(json.dumps(roles, indent=2))


LLADA_OFFICIAL_CONFIG = {  # the fields of LLaDA-8B-Instruct's config.json, at stand-in sizes
    "architectures": ["LLaDAModelLM"], "model_type": "llada", "activation_type": "silu", "alibi": False,
    "attention_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": 16,
    "embedding_size": 126464, "include_bias": False, "include_qkv_bias": False, "input_emb_norm": False,
    "layer_norm_type": "rms", "layer_norm_with_affine": True, "bias_for_layer_norm": False, "mask_token_id": 126336,
    "eos_token_id": 126081, "pad_token_id": 126081, "max_sequence_length": 4096, "mlp_hidden_size": 48,
    "mlp_ratio": 4, "n_heads": 4, "n_kv_heads": 4, "n_layers": 2, "rms_norm_eps": 1e-05, "rope": True,
    "rope_full_precision": True, "rope_theta": 500000.0, "scale_logits": False, "vocab_size": 126464,
    "weight_tying": False, "use_cache": False,
}


def write_llada_official(directory: Path, seed: int = 0, shards: int = 2, **changes: object) -> Path:
    """A tiny random LLaDA in the official checkpoint layout, read by the native implementation: ``config.json``
    under the official field names, the official parameter names (``model.transformer...``) split over ``shards``
    safetensors files listed by ``model.safetensors.index.json``, and LLaDA's tokenizer ids. No modeling code."""
    from models.llada import LLaDAConfig, LLaDAModel

    config = {**LLADA_OFFICIAL_CONFIG, **changes}
    torch.manual_seed(seed)
    model = LLaDAModel(LLaDAConfig.from_dict(config))
    return _write_official(Path(directory), model, config, "model.transformer.ff_out.weight", shards, _LLADA_SPECIALS,
                           LLADA_IDS["mask"], _LLADA_TEMPLATE,
                           {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"})


def _write_official(directory: Path, model: torch.nn.Module, config: dict, head_name: str, shards: int,
                    specials: dict[str, int], mask_id: int, chat_template: str, roles: dict[str, str]) -> Path:
    """Save a native model's state dict as the hub ships a checkpoint (shards and their index, ``config.json``,
    the tokenizer). The head's rows outside the bytes and the special tokens are zeroed and the others scaled up,
    so greedy decoding writes readable bytes, as with the remote-code stand-ins."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}
    if head_name in state:
        head = state[head_name]
        reachable = torch.zeros(head.shape[0], dtype=torch.bool)
        reachable[:256] = True
        reachable[[i for i in specials.values() if i != mask_id]] = True
        head[~reachable] = 0.0
        head[reachable] *= 30.0
    names = sorted(state)
    weight_map = {}
    for index in range(shards):
        file = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        save_file({name: state[name] for name in names[index::shards]}, directory / file, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names[index::shards], file))
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    _write_tokenizer(directory, specials, chat_template, roles)
    return directory


DREAM_OFFICIAL_CONFIG = {  # the fields of a Dream-v0-Instruct-7B config.json, at stand-in sizes
    "architectures": ["DreamModel"], "model_type": "Dream", "hidden_act": "silu", "hidden_size": 16,
    "intermediate_size": 48, "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "rope_scaling": None,
    "tie_word_embeddings": False, "vocab_size": 151667, "mask_token_id": DREAM_IDS["mask"],
    "pad_token_id": DREAM_IDS["eos"], "eos_token_id": DREAM_IDS["eos"], "bos_token_id": 151665,
}


def write_dream_official(directory: Path, seed: int = 0, shards: int = 2) -> Path:
    """A tiny random Dream in the official checkpoint layout (no modeling code), with Dream's tokenizer ids."""
    from models.dream import DreamConfig, DreamModel

    torch.manual_seed(seed)
    model = DreamModel(DreamConfig.from_dict(DREAM_OFFICIAL_CONFIG))
    return _write_official(Path(directory), model, DREAM_OFFICIAL_CONFIG, "lm_head.weight", shards, _DREAM_SPECIALS,
                           DREAM_IDS["mask"], _DREAM_TEMPLATE,
                           {"bos_token": "<|beginoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                            "mask_token": "<|mask|>"})
