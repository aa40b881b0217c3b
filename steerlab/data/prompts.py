"""Prompt text: chat templates and tokenisation, the same way everywhere.

A text produced by a chat template already holds its special tokens, so it is tokenised without adding any (some
tokenizers would add a second BOS). A raw text gets the tokenizer's usual special tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def supports_system_role(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the chat template renders a system message (some, like Gemma's, reject it)."""
    if not has_chat_template(tokenizer):
        return False
    probe = "steerlab-system-probe"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "system", "content": probe}, {"role": "user", "content": "x"}], tokenize=False
        )
    except Exception:  # templates raise their own error types (jinja TemplateError, ValueError, ...)
        return False
    return probe in str(text)


@dataclass(frozen=True)
class PromptStyle:
    """How a user message becomes the model's input text."""

    chat: bool = True
    system: str | None = None

    def render(self, tokenizer: PreTrainedTokenizerBase, user: str,
               history: Sequence[tuple[str, str]] = ()) -> str:
        """The text that ends where the assistant's answer starts; ``history`` holds earlier (user, answer) turns."""
        if not (self.chat and has_chat_template(tokenizer)):
            shots = "".join(f"{q}\n{a}\n\n" for q, a in history)
            head = f"{self.system}\n\n" if self.system else ""
            return f"{head}{shots}{user}"
        messages: list[dict[str, str]] = []
        for question, answer in history:
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        messages.append({"role": "user", "content": user})
        if self.system is not None:
            if supports_system_role(tokenizer):
                messages.insert(0, {"role": "system", "content": self.system})
            else:
                messages[0] = {"role": "user", "content": f"{self.system}\n\n{messages[0]['content']}"}
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    def templated(self, tokenizer: PreTrainedTokenizerBase) -> bool:
        return self.chat and has_chat_template(tokenizer)

    def turn_start(self, tokenizer: PreTrainedTokenizerBase, user: str,
                   history: Sequence[tuple[str, str]] = ()) -> int:
        """How many tokens of the encoded :meth:`render` come before the user's message (``turn`` positions)."""
        templated = self.templated(tokenizer)
        return turn_start(lambda text: encode(tokenizer, self.render(tokenizer, text, history), templated=templated),
                          user)


def turn_start(encoded: Callable[[str], list[int]], user: str) -> int:
    """How many tokens come before ``user`` in ``encoded(user)``, the token ids of a prompt built around a message.

    Found as the tokens the prompt shares with the same prompt around other messages: what a different message
    leaves unchanged is the system prompt, the earlier turns and the template's opening of the turn.
    """
    ids = encoded(user)
    shared = len(ids)
    # Two probes that differ in their first character: at least one differs from ``user`` there too.
    for probe in ("0", "1"):
        other = encoded(probe)
        common = 0
        while common < min(len(ids), len(other)) and ids[common] == other[common]:
            common += 1
        shared = min(shared, common)
    return shared


def encode(tokenizer: PreTrainedTokenizerBase, text: str, *, templated: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=not templated)["input_ids"])


def encode_continuation(tokenizer: PreTrainedTokenizerBase, prefix: str, answer: str, *, templated: bool) -> tuple[
    list[int], list[int]
]:
    """Token ids of ``prefix`` and of ``answer`` as it continues ``prefix``.

    The answer is tokenised in context (``prefix + answer``) and split where the prefix's tokens end, so the answer's
    first token is the one the model would really produce after the prefix. If the tokenizer merges across the
    boundary, the split falls back to the longest common prefix.
    """
    head = encode(tokenizer, prefix, templated=templated)
    whole = encode(tokenizer, prefix + answer, templated=templated)
    cut = 0
    while cut < min(len(head), len(whole)) and head[cut] == whole[cut]:
        cut += 1
    return whole[:cut], whole[cut:]


LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
LETTER_INSTRUCTION = "Respond with a single letter."


def question_text(question: str, context: str | None = None) -> str:
    return f"{context}\n\n{question}" if context else question


def lettered_prompt(question: str, choices: Sequence[str], context: str | None = None) -> str:
    """The full multiple-choice prompt: question, lettered choices, and the instruction to answer with a letter."""
    listed = "\n".join(f" ({LETTERS[i]}) {choice}" for i, choice in enumerate(choices))
    return f"{question_text(question, context)}\n\nChoices:\n{listed}\n\n{LETTER_INSTRUCTION}"


def letter_answer(index: int) -> str:
    """How an answer letter is written after the lettered prompt (the form CAA pairs use)."""
    return f"({LETTERS[index]})"
