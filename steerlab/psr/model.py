"""Prompt steering replacement (PSR): steering that imitates, token by token, what an instruction does.

A PSR model adds at each of its layers ``alpha * relu(w . h + b) * z`` to the block output ``h``: every token
gets its own coefficient, computed from its own activation. Three kinds share that form and one file kind
(``psr``):

* ``constant``: ``w = 0``, ``b = 1``, ``z`` = mean of (prompted - plain) activations, the CAA-like baseline;
* ``s-psr``: one layer, ``w``, ``b``, ``z`` learned;
* ``a-psr``: several layers, trained jointly through the model (each layer sees the already steered stream).

Objectives: ``mse`` (steered activations of the plain run against the prompted run, relative to the unsteered
error) and ``likelihood`` (log-likelihood of the prompted response under the steered model without the
prompt). A hinge on each layer's mean coefficient (:func:`hinge`) keeps the coefficients from collapsing to
zero. ``alpha`` is the steering strength of :func:`steerlab.core.hooks.steer`. Example::

    from steerlab import load_model, steer
    from steerlab.psr.model import train_psr
    from steerlab.psr.data import build_activation_data, load_prompts
    model, tok = load_model()
    data = build_activation_data(model, tok, "Respond in French.", load_prompts()[:64], cache_dir="psr-cache")
    psr = train_psr(model, data, kind="s-psr", layers=[12])
    psr.save("french.safetensors")
    with steer(model, psr, strength=2.0):
        ...
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from steerlab.core.hooks import steer
from steerlab.core.vector import read_steering_kind, write_steering_file
from steerlab.errors import ConfigError, VectorFileError
from steerlab.models import hidden_size, model_name, num_layers
from steerlab.progress import Progress, silent
from steerlab.psr.data import ActivationData, Item, prompt_digest, response_index
from steerlab.runtime import batching
from steerlab.runtime.capture import capture, run_until_captured

PSR_KIND = "psr"
PSR_KINDS: tuple[str, ...] = ("constant", "s-psr", "a-psr")
OBJECTIVES: tuple[str, ...] = ("mse", "likelihood")


@dataclass(eq=False)
class PSRModel:
    """Per layer ``w`` (hidden,), ``b`` (1,), ``z`` (hidden,); implements steerlab's ``Intervention``.

    ``delta`` is alpha-free: the steering hook multiplies it by the strength. Example::

        import torch
        psr = PSRModel("s-psr", {3: torch.ones(4)}, {3: torch.tensor([-1.0])}, {3: torch.ones(4)})
        h = torch.tensor([[[1.0, 0.0, 0.0, 0.5]]])
        assert psr.delta(3, h).tolist() == [[[0.5, 0.5, 0.5, 0.5]]]
    """

    psr_kind: str
    w: dict[int, torch.Tensor]
    b: dict[int, torch.Tensor]
    z: dict[int, torch.Tensor]
    metadata: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.psr_kind not in PSR_KINDS:
            raise ConfigError(f"unknown PSR kind {self.psr_kind!r}; choose one of {', '.join(PSR_KINDS)}")
        if not self.z or set(self.w) != set(self.z) or set(self.b) != set(self.z):
            raise ConfigError("a PSR model needs w, b and z at the same, non-empty set of layers")
        width = next(iter(self.z.values())).numel()
        for layer in self.z:
            shapes = (tuple(self.w[layer].shape), tuple(self.b[layer].shape), tuple(self.z[layer].shape))
            if shapes != ((width,), (1,), (width,)):
                raise ConfigError(
                    f"layer {layer}: w, b, z have shapes {shapes}, expected ({width},), (1,), ({width},)"
                )
            if not all(bool(torch.isfinite(t).all()) for t in (self.w[layer], self.b[layer], self.z[layer])):
                raise ConfigError(f"layer {layer} holds NaN or infinite values")
        order = sorted(self.z)
        self.w = {i: self.w[i] for i in order}
        self.b = {i: self.b[i] for i in order}
        self.z = {i: self.z[i] for i in order}
        self.metadata = dict(self.metadata or {})
        self._cast: dict[tuple[int, torch.dtype, torch.device], tuple[torch.Tensor, ...]] = {}

    @property
    def layer_indices(self) -> list[int]:
        return list(self.z)

    @property
    def hidden_size(self) -> int:
        return next(iter(self.z.values())).numel()

    def _params(self, layer: int, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        key = (layer, like.dtype, like.device)
        if key not in self._cast:
            self._cast[key] = tuple(
                t.to(device=like.device, dtype=like.dtype)
                for t in (self.w[layer], self.b[layer], self.z[layer])
            )
        return self._cast[key]

    def coefficients(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """``relu(w . h + b)`` per token: shape ``hidden.shape[:-1]``."""
        w, b, _ = self._params(layer, hidden)
        return torch.relu(hidden @ w + b)

    def delta(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """``relu(w . h + b) * z`` for ``hidden`` of shape (batch, seq, hidden)."""
        _, _, z = self._params(layer, hidden)
        return self.coefficients(layer, hidden).unsqueeze(-1) * z

    def save(self, path: str | Path) -> None:
        """Write a float32 steerlab ``psr`` file (tensors ``layer.<i>.w``, ``.b``, ``.z``)."""
        tensors: dict[str, torch.Tensor] = {}
        for layer in self.z:
            for name, table in (("w", self.w), ("b", self.b), ("z", self.z)):
                tensors[f"layer.{layer}.{name}"] = table[layer].detach().to("cpu", torch.float32)
        metadata = {
            **(self.metadata or {}),
            "kind": PSR_KIND,
            "psr_kind": self.psr_kind,
            "hidden_size": self.hidden_size,
            "layers": self.layer_indices,
        }
        write_steering_file(path, tensors, metadata)

    @classmethod
    def load(cls, path: str | Path) -> PSRModel:
        """Read a ``psr`` file of any PSR kind."""
        tensors, metadata = read_steering_kind(path, PSR_KIND, "a PSR model")
        psr_kind = metadata.get("psr_kind")
        layers = metadata.get("layers")
        if not isinstance(layers, list) or not all(isinstance(i, int) for i in layers):
            raise VectorFileError(f"{path}: metadata has no valid 'layers' list")
        expected = {f"layer.{i}.{n}" for i in layers for n in "wbz"}
        if set(tensors) != expected:
            raise VectorFileError(f"{path}: tensors {sorted(tensors)} do not match layers {layers}")
        tables = {n: {i: tensors[f"layer.{i}.{n}"] for i in layers} for n in "wbz"}
        try:
            return cls(str(psr_kind), tables["w"], tables["b"], tables["z"], metadata)
        except ConfigError as exc:
            raise VectorFileError(f"{path}: {exc}") from None

    def check_compatible(self, hidden_size: int, num_layers: int, model_name: str | None = None) -> None:
        """Raise VectorFileError unless the model has this hidden size and every layer."""
        target = f"model {model_name!r}" if model_name else "the model"
        if self.hidden_size != hidden_size:
            raise VectorFileError(
                f"the PSR model has hidden size {self.hidden_size}, but {target} has {hidden_size}"
            )
        outside = [i for i in self.z if i >= num_layers]
        if outside:
            raise VectorFileError(f"PSR layer(s) {outside} out of range: {target} has {num_layers} layers")


def default_layers(model: nn.Module, kind: str) -> list[int]:
    """One layer at 40% depth for ``constant`` and ``s-psr``; every ``depth // 10``-th layer for ``a-psr``."""
    depth = num_layers(model)
    if kind != "a-psr":
        return [round(0.4 * depth)]
    step = max(1, depth // 10)
    layers = list(range(step, depth - 1, step))
    return layers if len(layers) >= 2 else list(range(depth))


@dataclass(frozen=True)
class TrainSettings:
    """Optimiser settings. ``epochs`` None: 40 for fits on cached activations, 3 for fits through the
    model."""

    epochs: int | None = None
    lr: float = 1e-2
    batch_tokens: int = 256
    batch_size: int = 8
    hinge_weight: float = 1.0
    hinge_margin: float = 1.0
    seed: int = 0


class _Trainable(nn.Module):
    """The learnable ``w``, ``b``, ``z``; also an Intervention, so the steering hooks use it in training."""

    def __init__(self, init: PSRModel) -> None:
        super().__init__()
        self.w = nn.ParameterDict({str(i): nn.Parameter(t.clone().float()) for i, t in init.w.items()})
        self.b = nn.ParameterDict({str(i): nn.Parameter(t.clone().float()) for i, t in init.b.items()})
        self.z = nn.ParameterDict({str(i): nn.Parameter(t.clone().float()) for i, t in init.z.items()})
        self.last: dict[int, torch.Tensor] = {}  # coefficients of the latest forward, for the hinge

    @property
    def layer_indices(self) -> list[int]:
        return sorted(int(i) for i in self.z)

    @property
    def hidden_size(self) -> int:
        return int(next(iter(self.z.values())).numel())

    def coefficients(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        # The parameters live on the CPU; each block's hidden state may sit on its own device (device_map).
        like = {"device": hidden.device, "dtype": hidden.dtype}
        return torch.relu(hidden @ self.w[str(layer)].to(**like) + self.b[str(layer)].to(**like))

    def delta(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        coefficient = self.coefficients(layer, hidden)
        self.last[layer] = coefficient
        return coefficient.unsqueeze(-1) * self.z[str(layer)].to(device=hidden.device, dtype=hidden.dtype)

    def export(self, kind: str, metadata: dict[str, Any]) -> PSRModel:
        def table(params: nn.ParameterDict) -> dict[int, torch.Tensor]:
            return {int(i): p.detach().clone() for i, p in params.items()}

        return PSRModel(kind, table(self.w), table(self.b), table(self.z), metadata)


def _initial(data: ActivationData, kind: str, layers: list[int]) -> PSRModel:
    """Every kind starts as the constant solution: ``w = 0``, ``b = 1``, ``z`` = the increment of the mean
    difference since the previous steered layer (so the summed addition at the last layer is its mean
    difference).
    """
    missing = [layer for layer in layers if layer not in data.prompted]
    if missing:
        raise ConfigError(f"the activation data has no layer(s) {missing} (it has {data.layers})")
    width = data.hidden_size
    z: dict[int, torch.Tensor] = {}
    before = torch.zeros(width)
    for layer in layers:
        mean = data.mean_difference(layer)
        z[layer] = mean - before
        before = mean
    return PSRModel(kind, {i: torch.zeros(width) for i in layers}, {i: torch.ones(1) for i in layers}, z)


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Gradients flow through the model to the PSR parameters only; the flags are restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _optimizer(net: _Trainable, data: ActivationData, lr: float) -> torch.optim.Optimizer:
    # w . h moves by about lr * |h|_1 per Adam step of size lr; scaling w's step by the mean L1 norm of the
    # activations keeps the pre-activation moving by about lr, whatever the layer's scale.
    groups: list[dict[str, Any]] = [{"params": [*net.b.values(), *net.z.values()], "lr": lr}]
    for key, param in net.w.items():
        scale = float(data.plain[int(key)].abs().sum(dim=1).mean())
        groups.append({"params": [param], "lr": lr / max(scale, 1e-6)})
    return torch.optim.Adam(groups)


def hinge(coefficients: Mapping[int, torch.Tensor], margin: float, weight: float) -> torch.Tensor:
    """``weight * sum over layers of relu(margin - mean coefficient)``, each mean over the batch's response
    tokens: a floor under every layer's average coefficient, so that training cannot switch the ReLUs off.

    Example::

        c = {3: torch.tensor([0.2, 0.4]), 5: torch.tensor([2.0, 4.0])}
        assert abs(float(hinge(c, margin=1.0, weight=2.0)) - 1.4) < 1e-6
    """
    terms = [torch.relu(margin - c.mean()) for c in coefficients.values()]
    return weight * torch.stack(terms).sum()


def _unsteered_error(data: ActivationData, layer: int) -> float:
    return float(((data.prompted[layer] - data.plain[layer]) ** 2).sum(dim=1).mean())


def relative_mse(psr: PSRModel | _Trainable, data: ActivationData, layer: int) -> float:
    """Error of ``plain + delta(plain)`` against ``prompted`` at one layer, relative to unsteered (1.0)."""
    with torch.no_grad():
        steered = data.plain[layer] + psr.delta(layer, data.plain[layer])
        error = float(((steered - data.prompted[layer]) ** 2).sum(dim=1).mean())
    return error / max(_unsteered_error(data, layer), 1e-12)


def train_psr(
    model: nn.Module,
    data: ActivationData,
    *,
    kind: str = "s-psr",
    layers: Sequence[int] | None = None,
    objective: str = "mse",
    settings: TrainSettings = TrainSettings(),
    progress: Progress = silent,
) -> PSRModel:
    """Fit a PSR model of ``kind`` on ``data`` (from :func:`steerlab.psr.data.build_activation_data`).

    ``constant`` is closed-form. ``s-psr`` with ``mse`` fits on the cached activations alone; ``likelihood``
    and
    ``a-psr`` run the plain sequences through the model with the PSR hooked in, so each layer is trained on
    the stream the earlier steered layers produce.
    """
    if kind not in PSR_KINDS:
        raise ConfigError(f"unknown PSR kind {kind!r}; choose one of {', '.join(PSR_KINDS)}")
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    chosen = sorted(set(default_layers(model, kind) if layers is None else layers))
    if kind == "s-psr" and len(chosen) != 1:
        raise ConfigError(f"s-psr steers exactly one layer, got {chosen}; use a-psr for several")
    if kind == "a-psr" and len(chosen) < 2:
        raise ConfigError(f"a-psr steers several layers, got {chosen}; use s-psr for one")
    if data.hidden_size != hidden_size(model):
        raise ConfigError(
            f"the activation data has hidden size {data.hidden_size}, the model {hidden_size(model)}"
        )
    start = time.perf_counter()
    init = _initial(data, kind, chosen)
    metadata: dict[str, Any] = {
        "model": model_name(model),
        "instruction": data.instruction,
        "objective": objective,
        # Digests of the training prompts: evaluation refuses to report on any of them.
        "training": {
            "items": len(data.items),
            "tokens": data.offsets[-1],
            "prompt_sha256": [prompt_digest(item.prompt) for item in data.items],
        },
    }
    if kind == "constant":
        metadata["objective"] = "mean-difference"
        metadata["relative_mse"] = {str(i): relative_mse(init, data, i) for i in chosen}
        metadata["training"]["seconds"] = time.perf_counter() - start
        return PSRModel(kind, init.w, init.b, init.z, metadata)
    torch.manual_seed(settings.seed)
    net = _Trainable(init)
    from_cache = kind == "s-psr" and objective == "mse"
    epochs = settings.epochs if settings.epochs is not None else (40 if from_cache else 3)
    if epochs < 1:
        raise ConfigError(f"epochs must be at least 1, got {epochs}")
    optimizer = _optimizer(net, data, settings.lr)
    losses = (
        _fit_from_cache(net, data, chosen[0], epochs, optimizer, settings, progress)
        if from_cache
        else _fit_through_model(model, net, data, chosen, objective, epochs, optimizer, settings, progress)
    )
    result = net.export(kind, {})
    metadata["training"].update(
        {
            "epochs": epochs,
            "lr": settings.lr,
            "hinge_weight": settings.hinge_weight,
            "hinge_margin": settings.hinge_margin,
            "seed": settings.seed,
            "first_epoch_loss": losses[0],
            "last_epoch_loss": losses[-1],
            "seconds": time.perf_counter() - start,
        }
    )
    if kind == "s-psr":
        metadata["relative_mse"] = {str(i): relative_mse(result, data, i) for i in chosen}
    return PSRModel(kind, result.w, result.b, result.z, metadata)


def _fit_from_cache(
    net: _Trainable,
    data: ActivationData,
    layer: int,
    epochs: int,
    optimizer: torch.optim.Optimizer,
    settings: TrainSettings,
    progress: Progress,
) -> list[float]:
    plain, prompted = data.plain[layer], data.prompted[layer]
    norm = max(_unsteered_error(data, layer), 1e-12)
    generator = torch.Generator().manual_seed(settings.seed)
    batches = math.ceil(len(plain) / settings.batch_tokens)
    losses = []
    for epoch in range(epochs):
        order = torch.randperm(len(plain), generator=generator)
        total = 0.0
        for start in range(0, len(plain), settings.batch_tokens):
            rows = order[start : start + settings.batch_tokens]
            h = plain[rows]
            steered = h + net.delta(layer, h)
            loss = ((steered - prompted[rows]) ** 2).sum(dim=1).mean() / norm
            loss = loss + hinge({layer: net.last[layer]}, settings.hinge_margin, settings.hinge_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        losses.append(total / batches)
        progress(epoch + 1, epochs, "PSR training")
    return losses


def _fit_through_model(
    model: nn.Module,
    net: _Trainable,
    data: ActivationData,
    layers: list[int],
    objective: str,
    epochs: int,
    optimizer: torch.optim.Optimizer,
    settings: TrainSettings,
    progress: Progress,
) -> list[float]:
    pad = int(getattr(getattr(model, "config", None), "pad_token_id", None) or 0)
    device = next(model.parameters()).device
    offsets = data.offsets
    norms = {layer: max(_unsteered_error(data, layer), 1e-12) for layer in layers}
    generator = torch.Generator().manual_seed(settings.seed)
    batches = math.ceil(len(data.items) / settings.batch_size)
    losses = []
    with _frozen(model):
        for epoch in range(epochs):
            order = torch.randperm(len(data.items), generator=generator).tolist()
            total = 0.0
            for done, start in enumerate(range(0, len(order), settings.batch_size)):
                chosen = order[start : start + settings.batch_size]
                items = [data.items[i] for i in chosen]
                rows = torch.cat([torch.arange(offsets[i], offsets[i + 1]) for i in chosen])
                loss = _batch_loss(model, net, items, rows, data, layers, objective, norms, pad, device)
                coefficients = _response_coefficients(net, items)
                loss = loss + hinge(coefficients, settings.hinge_margin, settings.hinge_weight)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
                progress(epoch * batches + done + 1, epochs * batches, "PSR training")
            losses.append(total / batches)
    return losses


def _response_coefficients(net: _Trainable, items: list[Item]) -> dict[int, torch.Tensor]:
    rows, cols = response_index(items, prompted=False)
    return {layer: c[rows, cols] for layer, c in net.last.items()}


def _batch_loss(
    model: nn.Module,
    net: _Trainable,
    items: list[Item],
    rows: torch.Tensor,
    data: ActivationData,
    layers: list[int],
    objective: str,
    norms: dict[int, float],
    pad: int,
    device: torch.device,
) -> torch.Tensor:
    ids, mask = batching.pad([item.sequence(False) for item in items], pad, side="right")
    ids, mask = ids.to(device), mask.to(device)
    index = response_index(items, prompted=False)
    with steer(model, net, 1.0):
        if objective == "mse":
            with capture(model, layers, stop_after=True) as store:
                run_until_captured(model, input_ids=ids, attention_mask=mask)
            terms = []
            for layer in layers:
                steered = store[layer][index].float()
                target = data.prompted[layer][rows].to(device)
                terms.append(((steered - target) ** 2).sum(dim=1).mean() / norms[layer])
            return torch.stack(terms).mean()
        logits = model(input_ids=ids, attention_mask=mask).logits
    targets = torch.tensor([t for item in items for t in item.response_ids], device=device)
    return nn.functional.cross_entropy(logits[index].float(), targets)
