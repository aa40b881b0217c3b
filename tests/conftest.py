"""Shared tiny random models and a word-level tokenizer with a chat template, for the core behaviour tests.

Every model is built from a fixed seed and its parameters are perturbed (random init leaves norms at identity),
so two builds of one family are bit-identical and a skipped norm or a misplaced addition shows up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import transformers as tf
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit

VOCAB = 96
HIDDEN = 32
DEPTH = 3
# Token ids 0, 1, 2 are pad, bos and eos in every config and in the tokenizer (ids must stay inside the vocab:
# GPT-2's default eos 50256 would not).
SPECIAL: dict[str, Any] = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
_LLAMA_LIKE: dict[str, Any] = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64,
                                   num_hidden_layers=DEPTH, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=128, **SPECIAL)

CONFIGS: dict[str, Callable[[], tf.PreTrainedConfig]] = {
    "llama": lambda: tf.LlamaConfig(**_LLAMA_LIKE),
    "qwen2": lambda: tf.Qwen2Config(**_LLAMA_LIKE),
    "gemma2": lambda: tf.Gemma2Config(**_LLAMA_LIKE, head_dim=8, sliding_window=4, final_logit_softcapping=5.0),
    "gpt2": lambda: tf.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=DEPTH, n_head=4, n_positions=128,
                                  **SPECIAL),
    "gpt_neox": lambda: tf.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64,
                                         num_hidden_layers=DEPTH, num_attention_heads=4,
                                         max_position_embeddings=128, **SPECIAL),
}
FAMILIES = sorted(CONFIGS)
# Per family, inside a decoder block: the attention and MLP modules (steer targets "attn" and "mlp") and the linear
# layer that ends each, whose bias is what a steering vector added to that module's output amounts to.
PARTS: dict[str, dict[str, tuple[str, str]]] = {
    **{name: {"attn": ("self_attn", "self_attn.o_proj"), "mlp": ("mlp", "mlp.down_proj")}
       for name in ("llama", "qwen2", "gemma2")},
    "gpt2": {"attn": ("attn", "attn.c_proj"), "mlp": ("mlp", "mlp.c_proj")},
    "gpt_neox": {"attn": ("attention", "attention.dense"), "mlp": ("mlp", "mlp.dense_4h_to_h")},
}


def build_model(family: str = "llama", dtype: torch.dtype = torch.float32, seed: int = 0) -> tf.PreTrainedModel:
    """A tiny random causal LM of ``family`` in eval mode; the same arguments give bit-identical weights."""
    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(CONFIGS[family]()).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return model.to(dtype)


CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} </turn> {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)
WORDS = ["<pad>", "<s>", "</s>", "<user>", "<assistant>", "<system>", "</turn>", "(A)", "(B)", "A", "B"]


def build_tokenizer() -> tf.PreTrainedTokenizerFast:
    """Whitespace word-level tokenizer: ids 0..2 are pad/bos/eos, then markup, then the words w0, w1, ..."""
    words = WORDS + [f"w{i}" for i in range(VOCAB - len(WORDS))]
    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    backend.pre_tokenizer = WhitespaceSplit()
    tokenizer = tf.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                                           eos_token="</s>", unk_token="<pad>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def random_ids(n: int, seed: int, low: int = len(WORDS)) -> list[int]:
    """``n`` ordinary (non-special) token ids."""
    return torch.randint(low, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def hooks(model: torch.nn.Module) -> dict[str, list[Callable[..., Any]]]:
    """Every forward hook and pre-hook of every module, by module name.

    transformers 5 installs hooks of its own (its output_hidden_states recorder) the first time hidden states are
    requested, so tests compare against a snapshot taken after such a call rather than against "no hooks".
    """
    found = {}
    for name, module in model.named_modules():
        registered = [*module._forward_hooks.values(), *module._forward_pre_hooks.values()]
        if registered:
            found[name or "<root>"] = registered
    return found


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def llama() -> tf.PreTrainedModel:
    return build_model("llama")


@pytest.fixture
def tokenizer() -> tf.PreTrainedTokenizerFast:
    return build_tokenizer()
