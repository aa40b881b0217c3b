"""The request bodies the server accepts (OpenAI's chat and completions, plus ``steering``), as pydantic models.

Fields OpenAI defines that the server does not implement are refused when set to anything but their default,
so a client never gets silently different behaviour; unknown fields are refused too.

Example body::

    {"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 32,
     "steering": [{"vector": "survival", "strength": 0.5, "layers": [12], "positions": "answer"}],
     "program": "refuse-harmful"}
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class SteeringItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vector: str = Field(min_length=1, max_length=128)
    strength: float | None = Field(default=None, allow_inf_nan=False)  # default: the vector's recipe, else 1
    layers: list[int] | None = Field(default=None, min_length=1, max_length=256)  # default: recipe, else all
    positions: str | None = None  # default: recipe, else "all"


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class _Generation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)  # what torch.Generator.manual_seed takes
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] = 1
    user: str | None = None
    ignore_eos: bool = False  # vLLM's extension: generate max_tokens tokens whatever the model's end token
    steering: list[SteeringItem] = Field(default_factory=list)
    program: str | None = Field(default=None, min_length=1, max_length=128)  # a conditional program, by name

    def stops(self) -> tuple[str, ...]:
        values = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return tuple(value for value in values if value)


class ChatRequest(_Generation):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class CompletionRequest(_Generation):
    prompt: str
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's default for completions
