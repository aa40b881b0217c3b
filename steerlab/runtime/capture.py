"""Capturing block outputs during a forward pass, optionally stopping right after the deepest one needed.

Layer ``i`` is the output of decoder block ``i`` (``hidden_states[i + 1]`` in transformers). Hooks added here run
after steering hooks (which are prepended), so they see the stream the next block receives.

Example::

    from steerlab import load_model
    from steerlab.runtime.capture import capture, run_until_captured
    model, tok = load_model()
    with capture(model, [10, 12], stop_after=True) as states:
        run_until_captured(model, **tok("Hello", return_tensors="pt"))  # blocks 13.. and the LM head never run
    print(states[12].shape)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import torch
from torch import nn

from steerlab.models import Target, target_module


class _Stop(Exception):
    """Raised by the hook on the deepest captured block: the rest of the forward is not needed."""


@contextmanager
def capture(model: nn.Module, layers: Sequence[int], *, stop_after: bool = False,
            target: Target = "residual") -> Iterator[dict[int, torch.Tensor]]:
    """Hooks that store each listed block's output (or its attention or MLP output, see ``target``) in the yielded
    dict (the latest call's, per layer).

    With ``stop_after`` the forward is cut short after the deepest listed layer: make the call through
    :func:`run_until_captured`.
    """
    store: dict[int, torch.Tensor] = {}
    last = max(layers)
    handles = []
    for layer in sorted(set(layers)):

        def hook(module: nn.Module, args: tuple[Any, ...], output: Any, layer: int = layer) -> None:
            store[layer] = output[0] if isinstance(output, tuple) else output
            if stop_after and layer == last:
                raise _Stop

        handles.append(target_module(model, layer, target).register_forward_hook(hook))
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


def run_until_captured(call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """``call(*args, **kwargs)`` (the model or its base model) inside a ``capture(..., stop_after=True)`` block,
    swallowing the early stop."""
    with suppress(_Stop):
        call(*args, **kwargs)
