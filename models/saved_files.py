"""What the saved files a user can point at must hold, stated once and checked without torch: a saved filter (a
train_filter artifact's ``filter/`` or a train_policy artifact's ``policy/`` folder), a native LLaDA or Dream
``config.json`` (``model.architecture`` holds the same fields for random weights), a checkpoint's tensors against
its config, and whether the weights fit the memory of the device they are bound for.

The pre-flight validation (:mod:`pipeline.configuration.validation`) reads these rules before anything is written,
and the loaders (:mod:`models.filter`, :mod:`models.llada`, :mod:`models.dream`, :mod:`models.checkpoint`) read the
same ones, so a stage or lm-eval that loads a file directly refuses it in the same words. A field's fault is a
:class:`FieldError` (a ``ValueError``, as the model classes raise); whoever knows where the field came from names
it: the file (:meth:`FieldError.in_file`) or the setting (:meth:`FieldError.in_setting`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import string
import subprocess
from pathlib import Path
from typing import Any

from models.errors import ConfigError, InputError
from models.files import check_safetensors, read_json_object

MODEL_FIX = ("re-download the model, or for the embedded model rebuild it with `python -m pipeline stage=pretrain` "
             "(or `git checkout models/checkpoints`)")
INDEX = "model.safetensors.index.json"


class FieldError(ValueError):
    """A field outside what is allowed: ``<field>=<value as JSON>: <what is allowed>``."""

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}={json.dumps(value, default=str)}: {allowed}")

    def in_file(self, file: Path, fix: str) -> InputError:
        return InputError(file, str(self), fix)

    def in_setting(self, prefix: str) -> ConfigError:
        return ConfigError(f"{prefix}.{self.field}", self.value, self.allowed)


class MismatchedFile(InputError, ValueError):
    """A weights file that does not hold the tensors its description gives (a ``ValueError`` too, as the
    checkpoint loader's callers expect)."""


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def integer(fields: dict, name: str, minimum: int = 1, optional: bool = False) -> int | None:
    value = fields.get(name)
    if value is None and optional:
        return None
    if not is_integer(value) or value < minimum:
        raise FieldError(name, value, f"allowed: an integer >= {minimum}{' (or null)' if optional else ''}")
    return value


def positive(fields: dict, name: str) -> None:
    value = fields.get(name)
    if value is not None and not (isinstance(value, int | float) and not isinstance(value, bool)
                                  and math.isfinite(value) and value > 0):
        raise FieldError(name, value, "allowed: a number > 0")


def flag(fields: dict, name: str) -> None:
    if fields.get(name) is not None and not isinstance(fields[name], bool):
        raise FieldError(name, fields[name], "allowed: true or false")


def one_of(fields: dict, name: str, allowed: tuple) -> None:
    if fields.get(name) not in allowed:
        raise FieldError(name, fields.get(name), f"allowed: {', '.join(map(str, allowed))}")


def divides(name: str, value: int, whole_name: str, whole: int) -> None:
    if whole % value:
        raise FieldError(name, value, f"allowed: a divisor of {whole_name} ({whole})")


def even_heads(name: str, width_name: str, width: int, heads: int) -> None:
    if (width // heads) % 2:
        raise FieldError(name, heads, f"{width_name} / {name} = {width // heads}, an odd head size; allowed: heads "
                                      "of an even size (rotary positions rotate pairs of dimensions)")


def token_ids(fields: dict, names: tuple[str, ...], vocab_size: int) -> None:
    """Special token ids, each null or an id of the vocabulary (Dream's end-of-text may be a list of them)."""
    for name in names:
        value = fields.get(name)
        ids = value if isinstance(value, list) else [value]
        if value is not None and not all(is_integer(i) and 0 <= i < vocab_size for i in ids):
            raise FieldError(name, value, f"allowed: a token id from 0 to vocab_size - 1 ({vocab_size - 1})")


# ---- saved filters (models/filter.py) ---------------------------------------------------------------------------

FEATURES = ("confidence", "entropy", "margin", "position", "step", "committed", "kl", "stability", "is_end",
            "distance_to_committed", "distance_to_end", "masked_run_before")  # pipeline/decoding/features.py
FILTER_ARCHITECTURES = ("mlp", "transformer")
FILTER_DEFAULTS = {"block_length": 32, "features": ["confidence"], "num_layers": 2, "hidden_size": None,
                   "threshold": None, "architecture": "mlp", "num_heads": 4, "speed_conditioned": False,
                   "speed": None}  # models/filter.py's FilterConfig
TRANSFORMER_WIDTH = 32  # a transformer filter's hidden size when hidden_size is null
FILTER_FIX = "point decode.filter_path at a train_filter artifact's filter/ folder, or retrain the filter"


def filter_width(description: dict) -> int:
    """The hidden size: ``hidden_size``, else the block length (mlp, as in the paper) or 32 (transformer)."""
    default = description["block_length"] if description["architecture"] == "mlp" else TRANSFORMER_WIDTH
    return description["hidden_size"] or default


def check_filter_fields(fields: dict) -> dict:
    """Every field of a filter's description (models/filter.py's FilterConfig, a saved ``filter.json``); returns
    it with the defaults filled in."""
    unknown = sorted(set(fields) - set(FILTER_DEFAULTS))
    if unknown:
        raise FieldError(unknown[0], fields[unknown[0]], f"no such field; allowed: {', '.join(FILTER_DEFAULTS)}")
    filled = {**FILTER_DEFAULTS, **fields}
    integer(filled, "block_length")
    features = filled["features"]
    if not isinstance(features, list | tuple) or not features or any(f not in FEATURES for f in features):
        raise FieldError("features", features, f"allowed: a non-empty list of {', '.join(FEATURES)}")
    integer(filled, "num_layers")
    integer(filled, "hidden_size", optional=True)
    threshold = filled["threshold"]
    if threshold is not None and not (isinstance(threshold, int | float) and not isinstance(threshold, bool)
                                      and 0 < threshold <= 1):
        raise FieldError("threshold", threshold, "allowed: a number in (0, 1] (or null)")
    one_of(filled, "architecture", FILTER_ARCHITECTURES)
    heads = integer(filled, "num_heads")
    if filled["architecture"] == "transformer" and filter_width(filled) % heads:
        raise FieldError("num_heads", heads, f"allowed: a divisor of the hidden size ({filter_width(filled)})")
    if not isinstance(filled["speed_conditioned"], bool):
        raise FieldError("speed_conditioned", filled["speed_conditioned"], "allowed: true or false")
    speed = filled["speed"]
    if speed is not None and not filled["speed_conditioned"]:
        raise FieldError("speed", speed, "allowed: null (a default speed needs speed_conditioned=true)")
    if speed is not None and not (isinstance(speed, int | float) and not isinstance(speed, bool)
                                  and math.isfinite(speed) and speed >= 0):
        raise FieldError("speed", speed, "allowed: a number >= 0 (or null)")
    return filled


def filter_tensor_shapes(description: dict) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of the network a (checked, filled) description builds: models/filter.py's layout."""
    width, inputs, length = filter_width(description), len(description["features"]), description["block_length"]
    if description["architecture"] == "transformer":
        shapes = {"embed.weight": (width, inputs), "embed.bias": (width,)}
        for layer in range(description["num_layers"]):
            at = f"blocks.layers.{layer}."
            shapes |= {at + "self_attn.in_proj_weight": (3 * width, width), at + "self_attn.in_proj_bias": (3 * width,),
                       at + "self_attn.out_proj.weight": (width, width), at + "self_attn.out_proj.bias": (width,),
                       at + "linear1.weight": (2 * width, width), at + "linear1.bias": (2 * width,),
                       at + "linear2.weight": (width, 2 * width), at + "linear2.bias": (width,)}
            shapes |= {at + f"norm{n}.{p}": (width,) for n in (1, 2) for p in ("weight", "bias")}
        shapes |= {"norm.weight": (width,), "norm.bias": (width,), "head.weight": (1, width), "head.bias": (1,)}
        speed_head = {"speed_head.weight": (1, width), "speed_head.bias": (1,)}
    else:
        widths = [length * inputs] + [width] * (description["num_layers"] - 1) + [length]
        shapes = {}
        for layer, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            shapes |= {f"net.{2 * layer}.weight": (b, a), f"net.{2 * layer}.bias": (b,)}
        speed_head = {"speed_head.weight": (length, length * inputs), "speed_head.bias": (length,)}
    return shapes | speed_head if description["speed_conditioned"] else shapes


def check_saved_filter(folder: Path, fix: str = FILTER_FIX) -> dict:
    """A saved filter's ``filter.json`` (every field) and ``filter.safetensors`` (whole, and holding exactly the
    tensors the description gives); returns the description with its defaults filled in."""
    description_file, weights = folder / "filter.json", folder / "filter.safetensors"
    if not description_file.is_file():
        raise InputError(description_file, "missing (a saved filter is filter.json and filter.safetensors)", fix)
    saved = read_json_object(description_file, fix)
    missing = [name for name in ("block_length", "features") if name not in saved]
    if missing:
        raise InputError(description_file, f"not a saved filter's description (no {', '.join(missing)})", fix)
    try:
        description = check_filter_fields(saved)
    except FieldError as error:
        raise error.in_file(description_file, fix) from error
    if not weights.is_file():
        raise InputError(weights, "missing", fix)
    located = {name: (weights, tuple(entry["shape"])) for name, entry in check_safetensors(weights, fix).items()}
    compare_tensors(filter_tensor_shapes(description), located, "filter.json", fix, weights, "the file")
    return description


# ---- native model configs (models/llada.py, models/dream.py) ----------------------------------------------------

# Settings of LLaDA's official config whose other values the native implementation does not compute: name -> allowed.
LLADA_SUPPORTED = {"block_type": ("llama",), "layer_norm_type": ("rms",), "activation_type": ("silu",),
                   "rope": (True,), "alibi": (False,), "include_bias": (False,), "attention_layer_norm": (False,),
                   "block_group_size": (1,), "input_emb_norm": (False,), "multi_query_attention": (None, False)}
# What LLaDA's official configuration_llada.py (ModelConfig) takes for a field config.json leaves out. The shipped
# checkpoints write every one; a config that omits one is read as the official code reads it, never as the native
# implementation's own choice (and is refused where that default is one the native implementation does not compute).
LLADA_DEFAULTS = {"block_type": "sequential", "activation_type": "swiglu", "layer_norm_type": "default", "rope": False,
                  "alibi": False, "include_bias": False, "attention_layer_norm": False, "block_group_size": 1,
                  "input_emb_norm": False, "multi_query_attention": None, "weight_tying": True,
                  "embedding_size": 50304, "mlp_ratio": 4, "rope_theta": 10000.0, "rope_full_precision": True,
                  "rms_norm_eps": 1e-05, "include_qkv_bias": False, "scale_logits": False}
NATIVE_TYPES = ("llada", "Dream")  # config.json's model_type of each native class (models/checkpoint.py NATIVE)
TOKEN_FIELDS = ("mask_token_id", "eos_token_id", "pad_token_id", "bos_token_id")
# The placeholder tokenizer of random weights gives these characters the first ids (models/tokenizer.py)
PLACEHOLDER_CHARACTERS = len([c for c in string.printable if c not in "\t\r\x0b\x0c"])


def check_native_config(config: dict) -> None:
    """The fields a native class reads from an official ``config.json``: known model type, computable settings,
    positive sizes, heads that divide the width, key/value heads that divide the heads, and token ids inside the
    vocabulary."""
    one_of(config, "model_type", NATIVE_TYPES)
    (check_llada_config if config["model_type"] == "llada" else check_dream_config)(config)


def llada_fields(config: dict) -> dict:
    """An official LLaDA ``config.json`` with every field it leaves out at the official default."""
    return {**LLADA_DEFAULTS, **config}


def check_llada_config(config: dict) -> None:
    given, config = config, llada_fields(config)
    for name, allowed in LLADA_SUPPORTED.items():
        if config[name] not in allowed:
            absent = "" if name in given else " (absent from config.json: LLaDA's configuration_llada.py default)"
            raise FieldError(name, config[name], f"allowed: {', '.join(json.dumps(a) for a in allowed)} (the native "
                                                 f"LLaDA implementation computes no other){absent}")
    width, heads = integer(config, "d_model"), integer(config, "n_heads")
    integer(config, "n_layers")
    vocab_size = integer(config, "vocab_size")
    integer(config, "max_sequence_length")
    for name in ("n_kv_heads", "mlp_hidden_size", "mlp_ratio", "embedding_size"):
        integer(config, name, optional=True)
    for name in ("rope_theta", "rms_norm_eps"):
        positive(config, name)
    for name in ("rope_full_precision", "include_qkv_bias", "weight_tying", "scale_logits"):
        flag(config, name)
    divides("n_heads", heads, "d_model", width)
    even_heads("n_heads", "d_model", width, heads)
    divides("n_kv_heads", config.get("n_kv_heads") or heads, "n_heads", heads)
    if (config.get("embedding_size") or vocab_size) < vocab_size:
        absent = "" if "embedding_size" in given else " (absent from config.json: LLaDA's official default)"
        raise FieldError("embedding_size", config["embedding_size"],
                         f"allowed: at least vocab_size ({vocab_size}){absent}")
    token_ids(config, TOKEN_FIELDS, vocab_size)


def check_dream_config(config: dict) -> None:
    width, heads = integer(config, "hidden_size"), integer(config, "num_attention_heads")
    vocab_size = integer(config, "vocab_size")
    for name in ("intermediate_size", "num_hidden_layers"):
        integer(config, name)
    for name in ("num_key_value_heads", "max_position_embeddings"):
        integer(config, name, optional=True)
    for name in ("rope_theta", "rms_norm_eps"):
        positive(config, name)
    flag(config, "tie_word_embeddings")
    if config.get("hidden_act") is not None:
        one_of(config, "hidden_act", ("silu",))
    scaling = config.get("rope_scaling")
    if scaling is None and isinstance(config.get("rope_parameters"), dict):  # newer transformers write it there
        scaling = config["rope_parameters"]
    if scaling and (not isinstance(scaling, dict) or scaling.get("rope_type", scaling.get("type")) != "default"):
        raise FieldError("rope_scaling", scaling, 'allowed: null or {"rope_type": "default"} (the native Dream '
                                                  "implementation computes plain rotary positions only)")
    divides("num_attention_heads", heads, "hidden_size", width)
    even_heads("num_attention_heads", "hidden_size", width, heads)
    divides("num_key_value_heads", config.get("num_key_value_heads") or heads, "num_attention_heads", heads)
    token_ids(config, TOKEN_FIELDS, vocab_size)


def native_tensor_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of the native model a (checked) config builds, under the official names."""
    if config["model_type"] == "llada":
        config = llada_fields(config)
        d, heads = config["d_model"], config["n_heads"]
        kv = (config.get("n_kv_heads") or heads) * (d // heads)
        hidden = config.get("mlp_hidden_size") or (config.get("mlp_ratio") or 4) * d
        table = config.get("embedding_size") or config["vocab_size"]
        bias = config.get("include_qkv_bias", False)
        shapes = {"model.transformer.wte.weight": (table, d), "model.transformer.ln_f.weight": (d,)}
        for layer in range(config["n_layers"]):
            at = f"model.transformer.blocks.{layer}."
            shapes |= {at + "attn_norm.weight": (d,), at + "q_proj.weight": (d, d), at + "k_proj.weight": (kv, d),
                       at + "v_proj.weight": (kv, d), at + "attn_out.weight": (d, d), at + "ff_norm.weight": (d,),
                       at + "ff_proj.weight": (hidden, d), at + "up_proj.weight": (hidden, d),
                       at + "ff_out.weight": (d, hidden)}
            if bias:
                shapes |= {at + "q_proj.bias": (d,), at + "k_proj.bias": (kv,), at + "v_proj.bias": (kv,)}
        if not config["weight_tying"]:
            shapes["model.transformer.ff_out.weight"] = (table, d)
        return shapes
    h, heads, mlp = config["hidden_size"], config["num_attention_heads"], config["intermediate_size"]
    kv = (config.get("num_key_value_heads") or heads) * (h // heads)
    shapes = {"model.embed_tokens.weight": (config["vocab_size"], h), "model.norm.weight": (h,)}
    for layer in range(config["num_hidden_layers"]):
        at = f"model.layers.{layer}."
        shapes |= {at + "self_attn.q_proj.weight": (h, h), at + "self_attn.q_proj.bias": (h,),
                   at + "self_attn.k_proj.weight": (kv, h), at + "self_attn.k_proj.bias": (kv,),
                   at + "self_attn.v_proj.weight": (kv, h), at + "self_attn.v_proj.bias": (kv,),
                   at + "self_attn.o_proj.weight": (h, h), at + "mlp.gate_proj.weight": (mlp, h),
                   at + "mlp.up_proj.weight": (mlp, h), at + "mlp.down_proj.weight": (h, mlp),
                   at + "input_layernorm.weight": (h,), at + "post_attention_layernorm.weight": (h,)}
    if not config.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (config["vocab_size"], h)
    return shapes


VOCABULARY_TENSORS = ("model.transformer.wte.weight", "model.transformer.ff_out.weight", "model.embed_tokens.weight",
                      "lm_head.weight")  # the embedding and output tables, one row per token


def parameter_count(config: dict) -> int:
    return sum(math.prod(shape) for shape in native_tensor_shapes(config).values())


def largest_size(config: dict) -> str:
    """The size field behind most of a (checked) config's parameters: the vocabulary's or the layers' count."""
    llada = config["model_type"] == "llada"
    vocabulary = "embedding_size" if llada and llada_fields(config)["embedding_size"] else "vocab_size"
    shapes = native_tensor_shapes(config)
    tables = sum(math.prod(shapes[name]) for name in VOCABULARY_TENSORS if name in shapes)
    if 2 * tables > sum(math.prod(shape) for shape in shapes.values()):
        return vocabulary
    return "n_layers" if llada else "num_hidden_layers"


# ---- checkpoints (models/checkpoint.py) -------------------------------------------------------------------------

def checkpoint_tensors(folder: Path, fix: str = MODEL_FIX) -> dict[str, tuple[Path, tuple[int, ...]]]:
    """Tensor name -> (file, shape), read from the safetensors headers: the shards ``model.safetensors.index.json``
    lists (each holding exactly the tensors the index puts there), else every ``.safetensors`` file."""
    index = folder / INDEX
    if not index.is_file():
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise InputError(folder, f"no model.safetensors and no {INDEX}", fix)
        return {name: (file, tuple(entry["shape"])) for file in files
                for name, entry in check_safetensors(file, fix).items()}
    weight_map = read_json_object(index, fix).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise InputError(index, "no weight_map (tensor name -> shard file)", fix)
    missing = sorted({name for name in weight_map.values() if not (folder / name).is_file()})
    if missing:
        raise InputError(folder / missing[0], "a shard the index lists is missing", fix)
    located = {}
    for shard in sorted(set(weight_map.values())):
        held = check_safetensors(folder / shard, fix)
        listed = {name for name, file in weight_map.items() if file == shard}
        extra, absent = sorted(set(held) - listed), sorted(listed - set(held))
        if extra:
            where = f"the index puts it in {weight_map[extra[0]]}" if extra[0] in weight_map else "not in the index"
            raise MismatchedFile(folder / shard, f"unexpected tensor {extra[0]!r} ({where}; {len(extra)} such)", fix)
        if absent:
            raise MismatchedFile(folder / shard, f"no tensor {absent[0]!r}, which the index puts in this shard "
                                                 f"({len(absent)} such)", fix)
        located |= {name: (folder / shard, tuple(entry["shape"])) for name, entry in held.items()}
    return located


def compare_tensors(expected: dict[str, tuple[int, ...]], located: dict[str, tuple[Path, tuple[int, ...]]],
                    described_by: str, fix: str, missing_in: Path, holder: str = "the checkpoint") -> None:
    """The files hold exactly the expected tensors, each of its expected shape; the first fault names its file
    (a missing tensor: ``missing_in``, said to be ``holder``)."""
    missing = sorted(set(expected) - set(located))
    if missing:
        raise MismatchedFile(missing_in, f"{holder} has no tensor {missing[0]!r} ({len(missing)} missing)", fix)
    extra = sorted(set(located) - set(expected))
    if extra:
        raise MismatchedFile(located[extra[0]][0], f"unexpected tensor {extra[0]!r} ({len(extra)} the model does "
                                                   "not have)", fix)
    for name, (file, shape) in sorted(located.items()):
        if tuple(shape) != tuple(expected[name]):
            raise MismatchedFile(file, f"tensor {name!r} has shape {list(shape)}, {described_by} gives "
                                       f"{list(expected[name])}", fix)


# ---- memory -----------------------------------------------------------------------------------------------------

BYTES_PER_PARAMETER = {"float32": 4, "bfloat16": 2, "float16": 2}
MEMORY_SHARE = 0.9  # weights above this share of the device's memory leave no room to run


def machine_memory() -> int:
    """Bytes of RAM this process may use: the machine's, or its control group's limit when lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit in (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")):
        try:
            total = min(total, int(limit.read_text().strip()))
        except (OSError, ValueError):  # absent, or "max" (no limit)
            continue
    return total


def gpu_memories() -> list[int] | None:
    """Bytes of memory of each GPU this process sees (CUDA_VISIBLE_DEVICES applied), from nvidia-smi without
    importing torch; None when nvidia-smi is absent or says nothing usable."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        said = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=20, check=True).stdout
        memories = [int(line.strip()) * 2**20 for line in said.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return memories or None
    try:
        return [memories[int(i)] for i in visible.split(",") if i.strip()] or None
    except (ValueError, IndexError):  # GPUs named by UUID, or not there: nothing to compare with
        return None


def placement(device: str) -> tuple[str, int, str] | None:
    """Where ``device`` puts the weights: ``(cpu or cuda, bytes of memory, how to say it)``; None when it cannot be
    told here (a GPU asked for where nvidia-smi cannot see it: the device is checked where the stage runs)."""
    if device != "cpu":
        gpus = gpu_memories()
        index = int(device.partition(":")[2] or 0)
        if gpus is not None and index < len(gpus):
            return "cuda", gpus[index], f"cuda:{index} has {size_text(gpus[index])}"
        if device != "auto":
            return None
    memory = machine_memory()
    return "cpu", memory, f"this machine has {size_text(memory)} of memory"


def size_text(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def count_text(count: int) -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if count >= scale:
            return f"{count / scale:.1f}{suffix}"
    return str(count)


def weights_problem(count: int, dtype: str, device: str) -> str | None:
    """Why ``count`` parameters in ``dtype`` (auto: bfloat16 on a GPU, float32 on the CPU) cannot be held on
    ``device``, or None when they fit (or where they go cannot be told here)."""
    where = placement(device)
    if where is None:
        return None
    kind, memory, said = where
    dtype = dtype if dtype != "auto" else ("bfloat16" if kind == "cuda" else "float32")
    size = count * BYTES_PER_PARAMETER[dtype]
    if size <= MEMORY_SHARE * memory:
        return None
    return (f"about {size_text(size)} of weights in {dtype} ({count_text(count)} parameters); {said}; allowed: "
            f"weights within {MEMORY_SHARE:.0%} of it (smaller sizes, model.dtype=bfloat16, or a device with more "
            "memory)")
