"""Steering vectors on the Hugging Face Hub, by the conventions users know: ``save_pretrained(vector, folder)``,
``from_pretrained(repo_id or folder)``, ``push_to_hub(vector, repo_id)``.

A Hub folder holds ``steering_vector.safetensors`` (the steerlab file, its recipe included) and ``README.md``, a
model card generated from the vector's metadata alone: the model, task, method, layers, strength, positions, the
measured effect with its interval and the command that made it. ``push_to_hub`` writes that very folder and
uploads it with ``huggingface_hub``'s ``upload_folder``, so what is tested offline is what gets pushed.

Example::

    from steerlab import SteeringVector, from_pretrained, save_pretrained
    from steerlab.interop.hub import Effect
    vector = SteeringVector.load("runs/survival/vector.safetensors")
    save_pretrained(vector, "survival-vector", effect=Effect("test accuracy delta", 0.12, 0.03, 0.21, "directional"),
                    command="steerlab run --task caa/survival-instinct")
    assert from_pretrained("survival-vector").metadata["task"] == vector.metadata["task"]
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from steerlab.core.vector import SteeringVector, atomic_output
from steerlab.errors import ConfigError, VectorFileError

VECTOR_FILE = "steering_vector.safetensors"
CARD_FILE = "README.md"
INSTALL = "pip install huggingface_hub"


@dataclass(frozen=True)
class Effect:
    """What the vector was measured to do: ``value`` with its 95% interval ``[low, high]`` and the verdict."""

    name: str
    value: float
    low: float | None = None
    high: float | None = None
    verdict: str | None = None

    @classmethod
    def from_report(cls, report: dict[str, Any]) -> Effect:
        """The chosen method's test delta and verdict from a ``steerlab run`` report.json."""
        try:
            delta = report["delta"]
            return cls("test accuracy delta (steered - unsteered)", float(delta["value"]), delta.get("low"),
                       delta.get("high"), report.get("verdict"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"the report has no usable 'delta' ({exc}); pass a steerlab run report.json") from None

    def text(self) -> str:
        interval = "" if self.low is None or self.high is None else f" [95% CI {self.low:+.3f}, {self.high:+.3f}]"
        verdict = "" if self.verdict is None else f"; verdict: {self.verdict}"
        return f"{self.name}: {self.value:+.3f}{interval}{verdict}"


def with_provenance(vector: SteeringVector, effect: Effect | None = None,
                    command: str | None = None) -> SteeringVector:
    """The vector with ``effect`` and ``command`` recorded in its metadata (what the card shows)."""
    metadata = dict(vector.metadata)
    if effect is not None:
        metadata["effect"] = asdict(effect)
    if command is not None:
        metadata["command"] = command
    return SteeringVector(dict(vector.layers), metadata)


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def model_card(vector: SteeringVector, repo_id: str | None = None) -> str:
    """The README.md of a Hub folder, from the vector's metadata: front matter, facts, how to use it."""
    meta = vector.metadata
    model = meta.get("model")
    recipe = vector.recipe
    layers = list(recipe.layers) if recipe is not None else list(vector.layers)
    front = ["---", "library_name: steerlab", "tags:", "- steerlab", "- steering-vector", "- activation-steering"]
    if isinstance(model, str) and _HUB_ID.fullmatch(model) and not Path(model).exists():
        front.append(f"base_model: {json.dumps(model)}")  # the Hub links a repo id only: not a folder or a class
    front.append("---")
    task, method = meta.get("task"), meta.get("method")
    title = " / ".join(str(x) for x in (task, method) if x) or "steering vector"
    facts = [("model", model), ("task", task), ("method", method), ("layers", ", ".join(map(str, layers))),
             ("hidden size", vector.hidden_size)]
    if recipe is not None:
        facts += [("strength", f"{recipe.strength:g} ({recipe.unit})"), ("positions", recipe.positions),
                  ("target", f"{recipe.target} output of each block")]
    effect = meta.get("effect")
    if isinstance(effect, dict):
        facts.append(("measured effect", Effect(**effect).text()))
    facts += [("seed", meta.get("seed")), ("selected by", meta.get("selected_by"))]
    rows = ["| property | value |", "|---|---|"]
    rows += [f"| {name} | {str(value).replace('|', '/')} |" for name, value in facts if value is not None]
    source = repo_id or "<this repo id or folder>"
    use = ["```python", "from steerlab import from_pretrained, load_model, steer", "",
           f'vector = from_pretrained("{source}")',
           f'model, tok = load_model("{model}")' if model else "model, tok = load_model(...)",
           "with steer(model, vector):  # " + ("applied as selected: layers, strength and positions from its recipe"
                                              if recipe is not None else "strength 1 at every layer of the vector"),
           '    print(tok.decode(model.generate(**tok("Hello", return_tensors="pt"), max_new_tokens=30)[0]))', "```"]
    parts = ["\n".join(front), f"# Steering vector: {title}",
             "A steerlab steering vector: added to the output of decoder block *i* (0-based) at layer *i*.",
             "\n".join(rows)]
    command = meta.get("command")
    if isinstance(command, str) and command:
        parts += ["## How it was made", f"```bash\n{command}\n```"]
    parts += ["## Use", "\n".join(use),
              f"Files: `{VECTOR_FILE}` (safetensors; tensors `layer.<i>`, float32; the recipe in its metadata)."]
    return "\n\n".join(parts) + "\n"


def save_pretrained(vector: SteeringVector, folder: str | Path, *, effect: Effect | None = None,
                    command: str | None = None, repo_id: str | None = None) -> Path:
    """Write ``folder/steering_vector.safetensors`` and its model card ``folder/README.md``; return the folder.

    Both files are written atomically; the same vector, effect and command always give the same bytes.
    """
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    recorded = with_provenance(vector, effect, command)
    recorded.save(out / VECTOR_FILE)
    with atomic_output(out / CARD_FILE) as tmp:
        tmp.write_text(model_card(recorded, repo_id), "utf-8")
    return out


def _hub() -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise ConfigError(f"the Hugging Face Hub needs huggingface_hub: {INSTALL}") from None
    return huggingface_hub


def from_pretrained(source: str | Path, *, revision: str | None = None) -> SteeringVector:
    """A steering vector from a folder written by :func:`save_pretrained`, a steerlab file, or a Hub repo id."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / VECTOR_FILE).is_file():
            raise VectorFileError(f"{path} has no {VECTOR_FILE}: not a folder written by save_pretrained")
        return SteeringVector.load(path / VECTOR_FILE)
    if path.is_file():
        return SteeringVector.load(path)
    if str(source).startswith(("/", ".", "~")) or str(source).count("/") > 1:
        raise VectorFileError(f"{source} does not exist (and is not a Hub repo id owner/name)")
    hub = _hub()
    try:
        downloaded = hub.hf_hub_download(str(source), VECTOR_FILE, revision=revision, library_name="steerlab")
    except Exception as exc:  # offline, unknown repo, no such file: one message naming the repo
        raise VectorFileError(f"cannot fetch {VECTOR_FILE} from the Hub repo {source}: {exc}") from None
    return SteeringVector.load(downloaded)


def push_to_hub(vector: SteeringVector, repo_id: str, *, effect: Effect | None = None, command: str | None = None,
                private: bool = False, token: str | None = None, commit_message: str = "Upload steering vector"
                ) -> str:
    """Create ``repo_id`` if needed and upload the :func:`save_pretrained` folder to it; return the commit URL."""
    hub = _hub()
    with tempfile.TemporaryDirectory() as scratch:
        folder = save_pretrained(vector, scratch, effect=effect, command=command, repo_id=repo_id)
        api = hub.HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
    return str(getattr(info, "commit_url", info))
