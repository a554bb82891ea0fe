"""Every decode setting of the project as an lm-evaluation-harness model, registered as ``learn2pd``.

``lm_eval --model learn2pd --model_args model=tiny,decode=threshold,threshold=0.9,eotp=true,gen_length=64,...``
(through ``python -m pipeline.lm_eval``, which registers the class first) evaluates any lm-eval task with the
project's loaded model and its one decoding loop. The model arguments are checked as the project's command line
checks its settings (:func:`pipeline.lm_eval.project.compose_project`); ``device`` and ``batch_size`` among them
take the place of lm-eval's ``--device`` and ``--batch_size``. What the model does follows LLaDA's own harness model
(``eval_llada.py``, ``llada_dist``) so its numbers compare with the published ones:

- ``generate_until``: the context is tokenized as the pipeline tokenizes a prompt (beginning-of-text first when
  the tokenizer has one and the context does not already start with it, as LLaDA's tokenizer adds it); the window
  is cut at the first end-of-text or end-of-turn token, at ``max_gen_toks`` tokens when the task asks for fewer
  than the window holds, and at the first of the task's ``until`` strings. Requests are decoded in batches of
  ``decode.batch_size`` through the same loop the sweeps use.
- ``loglikelihood``: LLaDA's Monte-Carlo estimate of the masked-diffusion bound: ``mc_num`` copies of
  context + continuation, in rounds of ``mc_batch_size``, each round masking a stratified number of continuation
  tokens (``k ~ U{1..L}``, then ``k, k + L/b, ...`` wrapped into ``1..L``), summing cross-entropy over the masked
  positions divided by the masked share; the mean over rounds, negated. Trailing spaces of the context move to
  the continuation (lm-eval's ``_encode_pair``). The random draws are seeded per request (from ``seed`` and its
  tokens, where LLaDA draws from one stream), so a data-parallel run gives each request the estimate a single
  process does. ``check_greedy=true`` also decodes the continuation greedily
  (one token per step) and reports whether it comes out; otherwise ``False``, as LLaDA recommends.
- ``loglikelihood_rolling`` (perplexity tasks) has no masked-diffusion counterpart here and is refused.

Per task the model counts forward passes and generated tokens (before the first end token: not the prompt, not
end-of-text padding) and times its decodes; :meth:`Learn2PDLM.speed` reports mean NFE and tokens/s.

Under ``torchrun`` or ``accelerate launch`` each process joins the launcher's group (:mod:`pipeline.lm_eval.ranks`)
and lm-eval hands it every ``world_size``-th document; the first process reports the speed summed over all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import defaultdict
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm.auto import tqdm

from models.errors import ConfigError
from pipeline.decoding.policies import Vanilla, build_policy
from pipeline.decoding.settings import DecodeSettings
from pipeline.evaluation.setting import reference_outputs, run_decode
from pipeline.lm_eval.project import LM_EVAL_DEFAULT_DEVICE, compose_project
from pipeline.lm_eval.ranks import Ranks, join, padding
from pipeline.modeling.loading import LoadedModel
from pipeline.tasks.base import Example
from pipeline.tasks.prompts import encode_prompt

log = logging.getLogger(__name__)


@register_model("learn2pd")
class Learn2PDLM(LM):
    """The project's model and one decode setting, seen by lm-evaluation-harness (see the module's docstring)."""

    last: Learn2PDLM | None = None  # the latest instance, whose speed the command line reports

    def __init__(self, **model_args: Any) -> None:
        super().__init__()
        from pipeline.configuration.command import decode_settings
        from pipeline.modeling.device import resolve_device
        from pipeline.modeling.loading import load_model

        if model_args.get("device") == LM_EVAL_DEFAULT_DEVICE and not torch.cuda.is_available():
            model_args["device"] = "auto"  # lm-eval's default, not the user's
        cfg = compose_project(model_args)
        ranks = join()
        loaded = load_model(cfg.model, ranks.device(resolve_device(cfg.device)))
        self.setup(loaded, decode_settings(cfg), str(cfg.model.name), int(model_args.get("mc_num", 128)),
                   int(model_args.get("mc_batch_size", 32)), bool(model_args.get("check_greedy", False)),
                   int(cfg.seed), ranks)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict[str, Any] | None = None) -> LM:
        """lm-eval passes its own ``device`` and ``batch_size`` (with its defaults when not given) beside the model
        arguments; the same keys in ``--model_args``, as documented, take their place instead of clashing."""
        given = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**{**given, **arg_dict})

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict[str, Any] | None = None) -> LM:
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def wrap(cls, loaded: LoadedModel, settings: DecodeSettings, name: str, mc_num: int = 128,
             mc_batch_size: int = 32, check_greedy: bool = False, seed: int = 0) -> Learn2PDLM:
        """An instance around a model the caller has already loaded (no config composed)."""
        lm = cls.__new__(cls)
        LM.__init__(lm)
        lm.setup(loaded, settings, name, mc_num, mc_batch_size, check_greedy, seed)
        return lm

    def setup(self, loaded: LoadedModel, settings: DecodeSettings, name: str, mc_num: int, mc_batch_size: int,
              check_greedy: bool, seed: int, ranks: Ranks | None = None) -> None:
        if mc_num < 1 or mc_batch_size < 1 or mc_num % mc_batch_size:
            raise ConfigError("--model_args mc_num", mc_num, f"allowed: a positive multiple of mc_batch_size "
                                                             f"({mc_batch_size})")
        self.loaded, self.settings, self.name = loaded, settings.validate(), name
        self.policy = build_policy(settings, loaded.device)
        self.mc_num, self.mc_batch_size, self.check_greedy = mc_num, mc_batch_size, check_greedy
        self.seed, self.generator = seed, torch.Generator(device=loaded.device)
        self._device = loaded.device
        self.ranks = ranks or Ranks()
        self._rank, self._world_size = self.ranks.rank, self.ranks.world_size  # lm-eval splits the documents by these
        self.counts: dict[str, dict[str, float]] = defaultdict(lambda: {"samples": 0, "nfe": 0, "tokens": 0,
                                                                        "seconds": 0.0})
        Learn2PDLM.last = self

    # --- data parallelism (pipeline.lm_eval.ranks) --------------------------------------------------------------
    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.ranks.all_gather(tensor)

    def gather_object(self, obj: Any, dst: int = 0) -> list[Any] | None:
        return self.ranks.gather_object(obj, dst)

    def barrier(self) -> None:
        self.ranks.barrier()

    # --- prompts -------------------------------------------------------------------------------------------
    @property
    def tokenizer_name(self) -> str:
        return self.name

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.loaded.tokenizer, "chat_template", None) or ""

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        tokenizer = self.loaded.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError("--apply_chat_template", True, f"the tokenizer of {self.name} has no chat template")
        return tokenizer.apply_chat_template(chat_history, add_generation_prompt=add_generation_prompt,
                                             tokenize=False)

    def encode(self, text: str) -> list[int]:
        """As the pipeline encodes a prompt; no second beginning-of-text when a chat template wrote one."""
        tokenizer = self.loaded.tokenizer
        if tokenizer.bos_token and text.startswith(tokenizer.bos_token):
            return list(tokenizer(text, add_special_tokens=False)["input_ids"])
        return encode_prompt(tokenizer, Example(prompt=text, answer="", final=""))

    # --- generation ----------------------------------------------------------------------------------------
    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        pads = padding(requests, self.world_size)
        if pads:
            return (kept := self.generate_until(requests[: len(requests) - pads], disable_tqdm)) + [kept[-1]] * pads
        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = defaultdict(list)
        for i, request in enumerate(requests):
            groups[json.dumps(request.args[1], sort_keys=True, default=str)].append(i)
        for indices in tqdm(groups.values(), desc="learn2pd generate", disable=disable_tqdm or len(groups) == 1):
            kwargs = requests[indices[0]].args[1]
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            limit = kwargs.get("max_gen_toks")
            if limit is not None and int(limit) > self.settings.gen_length:
                log.warning("the task allows %s generated tokens; the window holds gen_length=%d", limit,
                            self.settings.gen_length)
            order = sorted(indices, key=lambda i: -len(requests[i].args[0]))  # similar lengths batch together
            prompts = [self.encode(requests[i].args[0]) for i in order]
            references = reference_outputs(self.loaded, prompts, self.settings).tokens \
                if self.policy.needs_references else None
            decoded = run_decode(self.loaded, prompts, self.policy, self.settings, references,
                                 progress=not disable_tqdm, description=f"learn2pd {self.policy.name}")
            for row, i in enumerate(order):
                window = decoded.tokens[row].tolist()
                generated = next((j for j, tok in enumerate(window) if tok in self.loaded.end_ids), len(window))
                kept = window[: min(generated, int(limit))] if limit is not None else window[:generated]
                text = self.loaded.tokenizer.decode(kept, skip_special_tokens=True)
                for stop in until:
                    text = text.split(stop)[0]
                out[i] = text
                task = getattr(requests[i], "task_name", None) or "unnamed"
                counts = self.counts[task]
                counts["samples"] += 1
                counts["nfe"] += int(decoded.nfe[row])
                counts["tokens"] += generated
                counts["seconds"] += decoded.sample_seconds[row]
        return out

    def speed(self, ranks: list[dict[str, dict[str, float]]] | None = None) -> dict[str, dict[str, float]]:
        """Per task: samples, mean NFE, generated tokens and tokens/s (generated tokens over decoding time); over
        ``ranks`` (each process's ``counts``, :meth:`counts_over_ranks`) the sums, tokens/s summed over processes."""
        per_rank = ranks if ranks is not None else [dict(self.counts)]
        speed = {}
        for task in sorted({task for counts in per_rank for task in counts}):
            rows = [counts[task] for counts in per_rank if task in counts and counts[task]["samples"]]
            if not rows:
                continue
            samples, seconds = sum(c["samples"] for c in rows), sum(c["seconds"] for c in rows)
            rates = [c["tokens"] / c["seconds"] if c["seconds"] > 0 else float("nan") for c in rows]
            speed[task] = {"samples": samples, "nfe_mean": sum(c["nfe"] for c in rows) / samples,
                           "tokens": sum(c["tokens"] for c in rows), "seconds": seconds, "tokens_per_s": sum(rates)}
            if len(per_rank) > 1:
                speed[task]["processes"] = len(rows)
        return speed

    def counts_over_ranks(self) -> list[dict[str, dict[str, float]]] | None:
        """Every process's counts, on the first (None on the others); called by all of them."""
        return self.gather_object(dict(self.counts))

    # --- likelihoods ---------------------------------------------------------------------------------------
    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole, prefix = self.encode(context + continuation), self.encode(context)
        return prefix, whole[len(prefix):]

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pads = padding(requests, self.world_size)
        if pads:
            return (kept := self.loglikelihood(requests[: len(requests) - pads], disable_tqdm)) + [kept[-1]] * pads
        out = []
        for request in tqdm(requests, desc="learn2pd loglikelihood", disable=disable_tqdm):
            prefix, target = self.encode_pair(*request.args)
            if not target:
                raise ConfigError("loglikelihood", request.args[1], "an empty continuation has no likelihood")
            start = time.perf_counter()
            value = self.monte_carlo_loglikelihood(prefix, target)
            greedy = self.greedy_suffix(prefix, target) if self.check_greedy else False
            counts = self.counts[getattr(request, "task_name", None) or "unnamed"]
            counts["seconds"] += time.perf_counter() - start
            out.append((value, greedy))
        return out

    @torch.inference_mode()
    def monte_carlo_loglikelihood(self, prefix: list[int], target: list[int]) -> float:
        device, b, length = self.loaded.device, self.mc_batch_size, len(target)
        # the draws are the request's own (seeded by it), so its estimate is the same whichever process decodes it
        # and whatever came before: a data-parallel run equals a single-process one
        request = hashlib.sha256(json.dumps([self.seed, prefix, target]).encode()).digest()
        self.generator.manual_seed(int.from_bytes(request[:8], "little") >> 1)
        seq = torch.tensor([prefix + target], device=device).repeat(b, 1)
        losses = []
        for _ in range(self.mc_num // b):
            k = int(torch.randint(1, length + 1, (), generator=self.generator, device=device))
            counts = torch.round(torch.linspace(float(k), k + (b - 1) * (length / b), steps=b, device=device)).long()
            counts = (counts - 1) % length + 1
            ranks = torch.stack([torch.randperm(length, generator=self.generator, device=device) for _ in range(b)])
            masked = torch.cat([torch.zeros(b, len(prefix), dtype=torch.bool, device=device),
                                ranks < counts[:, None]], dim=1)
            noisy = torch.where(masked, torch.full_like(seq, self.loaded.mask_id), seq)
            logits = self.loaded.model(noisy).logits.float()
            share = (counts.float() / length)[:, None].expand_as(seq)
            loss = F.cross_entropy(logits[masked], seq[masked], reduction="none") / share[masked]
            losses.append(float(loss.sum()) / b)
        value = -sum(losses) / len(losses)
        if not math.isfinite(value):
            raise FloatingPointError(f"loglikelihood: the Monte-Carlo estimate is {value}, not a finite number (the "
                                     "model's logits overflow or are NaN); try --model_args dtype=float32, or check "
                                     "the model's weights")
        return value

    def greedy_suffix(self, prefix: list[int], target: list[int]) -> bool:
        """Whether one-token-per-step confidence decoding of the continuation's length writes the continuation."""
        settings = DecodeSettings(gen_length=len(target), block_length=len(target), batch_size=1)
        decoded = run_decode(self.loaded, [prefix], Vanilla(), settings)
        return decoded.tokens[0].tolist() == target

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        raise ConfigError("--tasks", "a perplexity task", "loglikelihood_rolling has no masked-diffusion estimate in "
                                                          "the learn2pd model; allowed: generate_until and "
                                                          "loglikelihood (multiple-choice) tasks")
