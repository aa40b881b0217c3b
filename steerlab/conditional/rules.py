"""Rules that combine conditions and behaviours: ``if harmful and not medical then refusal``.

Grammar (keywords are case-insensitive; a name is a letter, then letters, digits, ``_`` or ``-``)::

    rule  := "if" expr "then" NAME ("," NAME)*
    expr  := term ("or" term)*          # "and" binds tighter than "or", as in Python
    term  := factor ("and" factor)*
    factor:= "not" factor | "(" expr ")" | NAME

A behaviour is applied to a row when any rule naming it holds for that row. Evaluation is elementwise over the
rows of a batch.

Example::

    import torch
    from steerlab.conditional.rules import parse_rule
    rule = parse_rule("if harmful and not medical then refusal")
    fired = rule.condition.evaluate({"harmful": torch.tensor([True, True]), "medical": torch.tensor([False, True])})
    assert fired.tolist() == [True, False] and rule.behaviours == ("refusal",)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from steerlab.errors import ConfigError

NAME = re.compile(r"[A-Za-z][A-Za-z0-9_\-]*")
_TOKEN = re.compile(r"\s+|[(),]|[A-Za-z0-9_\-]+|.")
_PUNCTUATION = ("(", ")", ",")
_KEYWORDS = ("if", "then", "and", "or", "not")


@dataclass(frozen=True)
class Name:
    name: str

    def evaluate(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return values[self.name].bool()

    def names(self) -> set[str]:
        return {self.name}


@dataclass(frozen=True)
class Not:
    operand: Expression

    def evaluate(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return ~self.operand.evaluate(values)

    def names(self) -> set[str]:
        return self.operand.names()


@dataclass(frozen=True)
class And:
    operands: tuple[Expression, ...]

    def evaluate(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        result = self.operands[0].evaluate(values)
        for operand in self.operands[1:]:
            result = result & operand.evaluate(values)
        return result

    def names(self) -> set[str]:
        return set().union(*(operand.names() for operand in self.operands))


@dataclass(frozen=True)
class Or:
    operands: tuple[Expression, ...]

    def evaluate(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        result = self.operands[0].evaluate(values)
        for operand in self.operands[1:]:
            result = result | operand.evaluate(values)
        return result

    def names(self) -> set[str]:
        return set().union(*(operand.names() for operand in self.operands))


Expression = Name | Not | And | Or


@dataclass(frozen=True)
class Rule:
    """``if condition then behaviours``; ``text`` is the rule as written."""

    text: str
    condition: Expression
    behaviours: tuple[str, ...]


def _tokens(text: str) -> list[str]:
    tokens = []
    for match in _TOKEN.finditer(text):
        piece = match.group()
        if piece.isspace():
            continue
        if piece not in _PUNCTUATION and NAME.fullmatch(piece) is None:
            raise ConfigError(f"rule {text!r}: unexpected character {piece!r} at column {match.start() + 1}")
        tokens.append(piece)
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.at = 0

    def error(self, message: str) -> ConfigError:
        return ConfigError(f"rule {self.text!r}: {message}")

    def peek(self) -> str | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token is not None and token.lower() == word:
            self.at += 1
            return True
        return False

    def name(self, what: str) -> str:
        token = self.peek()
        if token is None or token in _PUNCTUATION or token.lower() in _KEYWORDS:
            found = "the end of the rule" if token is None else repr(token)
            raise self.error(f"expected {what}, found {found}")
        self.at += 1
        return token

    def rule(self) -> Rule:
        if not self.keyword("if"):
            raise self.error("a rule starts with 'if' (if CONDITION then BEHAVIOUR)")
        condition = self.expr()
        if not self.keyword("then"):
            found = self.peek()
            raise self.error(f"expected 'then' or an operator, found {'the end' if found is None else repr(found)}")
        behaviours = [self.name("a behaviour name after 'then'")]
        while self.peek() == ",":
            self.at += 1
            behaviours.append(self.name("a behaviour name after ','"))
        if self.peek() is not None:
            raise self.error(f"unexpected {self.peek()!r} after the behaviours")
        return Rule(self.text, condition, tuple(behaviours))

    def expr(self) -> Expression:
        operands = [self.term()]
        while self.keyword("or"):
            operands.append(self.term())
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def term(self) -> Expression:
        operands = [self.factor()]
        while self.keyword("and"):
            operands.append(self.factor())
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def factor(self) -> Expression:
        if self.keyword("not"):
            return Not(self.factor())
        if self.peek() == "(":
            self.at += 1
            inner = self.expr()
            if self.peek() != ")":
                raise self.error("missing ')'")
            self.at += 1
            return inner
        return Name(self.name("a condition name"))


def parse_rule(text: str) -> Rule:
    """The rule written in ``text``; a ConfigError quoting the rule says what is wrong with it."""
    return _Parser(text).rule()


def check_rule(rule: Rule, conditions: set[str], behaviours: set[str]) -> None:
    """A ConfigError naming the rule if it mentions a condition or a behaviour that does not exist."""
    unknown = sorted(rule.condition.names() - conditions)
    if unknown:
        known = ", ".join(sorted(conditions)) or "none"
        raise ConfigError(f"rule {rule.text!r}: unknown condition(s) {', '.join(unknown)} (known: {known})")
    unknown = sorted(set(rule.behaviours) - behaviours)
    if unknown:
        known = ", ".join(sorted(behaviours)) or "none"
        raise ConfigError(f"rule {rule.text!r}: unknown behaviour(s) {', '.join(unknown)} (known: {known})")
