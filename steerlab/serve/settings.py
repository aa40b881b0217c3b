"""What a server allows: its limits and its key, fixed at start-up (the CLI's flags fill them).

Example::

    from steerlab.serve.settings import Limits, ServeSettings
    settings = ServeSettings(model_id="smollm2-135m", api_key="s3cret", limits=Limits(max_tokens=256))
"""

from __future__ import annotations

from dataclasses import dataclass, field

from steerlab.errors import ConfigError

LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 256 * 1024
    max_prompt_tokens: int = 2048
    max_tokens: int = 512  # output tokens per request
    max_vectors: int = 4  # steering items per request
    max_strength: float = 20.0  # |strength| per item
    max_batch: int = 32  # requests decoded together
    max_queue: int = 64  # requests waiting for a batch slot; beyond: 429
    timeout_s: float = 300.0  # per request, queueing included

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_prompt_tokens", "max_tokens", "max_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"limit {name} must be >= 1, got {getattr(self, name)}")
        if self.max_vectors < 0 or self.max_queue < 0:
            raise ConfigError("max_vectors and max_queue must be >= 0")
        if not self.max_strength > 0 or not self.timeout_s > 0:
            raise ConfigError("max_strength and timeout_s must be > 0")


@dataclass(frozen=True)
class ServeSettings:
    model_id: str
    api_key: str | None = None
    limits: Limits = field(default_factory=Limits)


def check_exposure(host: str, api_key: str | None) -> None:
    """Refuse to listen beyond loopback without a key: anyone who can reach the port could use the model."""
    if host not in LOOPBACK and not api_key:
        raise ConfigError(f"refusing to listen on {host} without an API key: pass --api-key or set "
                          "STEERLAB_API_KEY (or listen on 127.0.0.1)")
