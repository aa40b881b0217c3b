"""From a validated request body to an engine job: the prompt's tokens, the sampling, each steering item resolved
against the vector library and checked against the limits. Every refusal is an :class:`ApiError` with its status.

Example::

    service = Service(engine, tokenizer, library, ServeSettings(model_id="smollm2-135m"))
    job, steering = service.job(ChatRequest.model_validate(body))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from steerlab.conditional.program import ConditionalProgram
from steerlab.conditional.reading import encode_prompt
from steerlab.core.rows import RowTerm, row_term
from steerlab.data.prompts import PromptStyle, turn_start
from steerlab.errors import ConfigError
from steerlab.serve.engine import Engine, Job, Sampling
from steerlab.serve.protocol import ChatRequest, CompletionRequest
from steerlab.serve.settings import ServeSettings
from steerlab.serve.vectors import VectorLibrary


class ApiError(Exception):
    """A refused request: the HTTP status, an OpenAI-style error type, and the field at fault."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error", param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}


@dataclass
class Service:
    engine: Engine
    tokenizer: PreTrainedTokenizerBase
    library: VectorLibrary
    settings: ServeSettings
    max_positions: int | None = None  # the model's context length, when its config says
    _chat_template: bool = field(init=False)

    def __post_init__(self) -> None:
        self._chat_template = bool(getattr(self.tokenizer, "chat_template", None))

    def job(self, request: ChatRequest | CompletionRequest) -> tuple[Job, list[dict[str, Any]]]:
        """The engine job for ``request`` and its steering items as applied (for the response)."""
        limits = self.settings.limits
        if request.model != self.settings.model_id:
            raise ApiError(404, f"model {request.model!r} is not served here; this server serves "
                                f"{self.settings.model_id!r}", kind="model_not_found", param="model")
        program = self._program(request.program)
        prompt, span = self._prompt(request, program is not None)
        where = "messages" if isinstance(request, ChatRequest) else "prompt"
        if not prompt:
            raise ApiError(400, "the prompt has no tokens", param=where)
        if len(prompt) > limits.max_prompt_tokens:
            raise ApiError(400, f"the prompt has {len(prompt)} tokens; the limit is {limits.max_prompt_tokens}",
                           param=where)
        asked = request.max_tokens
        if isinstance(request, ChatRequest) and request.max_completion_tokens is not None:
            asked = request.max_completion_tokens
        room = limits.max_tokens if self.max_positions is None else self.max_positions - len(prompt)
        max_tokens = asked if asked is not None else max(1, min(limits.max_tokens, room))  # unasked: what fits
        if max_tokens > limits.max_tokens:
            raise ApiError(400, f"max_tokens is {max_tokens}; the limit is {limits.max_tokens}", param="max_tokens")
        if self.max_positions is not None and len(prompt) + max_tokens > self.max_positions:
            raise ApiError(400, f"prompt ({len(prompt)} tokens) plus max_tokens ({max_tokens}) exceeds the model's "
                                f"context of {self.max_positions}", param="max_tokens")
        terms, applied = self._steering(request)
        sampling = Sampling(max_tokens, request.temperature, request.top_p, request.seed, request.stops(),
                            request.ignore_eos)
        turn = self._turn_start(request) if any(term.positions == "turn" for term in terms) else 0
        return Job(tuple(prompt), sampling, tuple(terms), program, span, turn), applied

    def _turn_start(self, request: ChatRequest | CompletionRequest) -> int:
        """Tokens before the user's last message (``turn`` positions); a completion prompt is all turn."""
        if isinstance(request, CompletionRequest):
            return 0
        messages = [message.model_dump() for message in request.messages]

        def encoded(text: str) -> list[int]:
            return self._chat_ids([*messages[:-1], {**messages[-1], "content": text}])

        return turn_start(encoded, str(messages[-1]["content"]))

    def _chat_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        """The chat template's tokens for ``messages``; a template that refuses them (roles that do not alternate,
        a leading assistant turn: real templates call ``raise_exception``) is the request's fault."""
        try:
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                     return_dict=False)
        except TemplateError as exc:
            raise ApiError(400, f"the model's chat template refused these messages: {exc}", param="messages") from None
        return [int(t) for t in ids]  # type: ignore[arg-type]

    def _program(self, name: str | None) -> ConditionalProgram | None:
        if name is None:
            return None
        try:
            entry = self.library.get(name)
        except ConfigError as exc:
            raise ApiError(400, str(exc), param="program") from None
        if not isinstance(entry.source, ConditionalProgram):
            raise ApiError(400, f"{name!r} is a steering vector, not a conditional program: send it in 'steering'",
                           param="program")
        return entry.source

    def _prompt(self, request: ChatRequest | CompletionRequest,
                conditional: bool) -> tuple[list[int], tuple[int, int] | None]:
        """The prompt's tokens and, for a conditional program, the span of the user turn its conditions read."""
        if isinstance(request, CompletionRequest):
            ids = [int(t) for t in self.tokenizer(request.prompt)["input_ids"]]
            return ids, (0, len(ids)) if conditional else None
        if not self._chat_template:
            raise ApiError(400, "this model has no chat template; use /v1/completions", param="messages")
        if conditional:
            return self._turn(request)
        return self._chat_ids([message.model_dump() for message in request.messages]), None

    def _turn(self, request: ChatRequest) -> tuple[list[int], tuple[int, int]]:
        """The one user turn (after an optional system message) that a program's conditions read."""
        roles = [message.role for message in request.messages]
        if roles not in (["user"], ["system", "user"]):
            raise ApiError(400, f"a conditional program reads one user turn: send [system?, user] messages, not "
                                f"{roles}", param="messages")
        system = request.messages[0].content if roles[0] == "system" else None
        try:
            ids, span = encode_prompt(self.tokenizer, request.messages[-1].content, PromptStyle(system=system))
        except ConfigError as exc:
            raise ApiError(400, str(exc), param="messages") from None
        return ids, span

    def _steering(self, request: ChatRequest | CompletionRequest) -> tuple[list[RowTerm], list[dict[str, Any]]]:
        limits = self.settings.limits
        if len(request.steering) > limits.max_vectors:
            raise ApiError(400, f"{len(request.steering)} steering items; the limit is {limits.max_vectors}",
                           param="steering")
        terms, applied = [], []
        for number, item in enumerate(request.steering):
            where = f"steering[{number}]"
            if item.strength is not None and abs(item.strength) > limits.max_strength:
                raise ApiError(400, f"strength {item.strength} is outside [-{limits.max_strength}, "
                                    f"{limits.max_strength}]", param=f"{where}.strength")
            try:
                entry = self.library.get(item.vector)
                if isinstance(entry.source, ConditionalProgram):
                    raise ConfigError(f"{item.vector!r} is a conditional program: send it as 'program'")
                term = row_term(entry.source, item.strength, layers=item.layers, positions=item.positions)
            except ConfigError as exc:
                raise ApiError(400, str(exc), param=where) from None
            if abs(term.weight) > limits.max_strength:  # a recipe's own strength is held to the same limit
                raise ApiError(400, f"strength {term.weight} (from the vector's recipe) is outside "
                                    f"[-{limits.max_strength}, {limits.max_strength}]", param=f"{where}.strength")
            terms.append(term)
            applied.append({"vector": entry.name, "strength": term.weight, "layers": sorted(term.layers),
                            "positions": term.positions})
        return terms, applied
