"""Prompt Steering Replacement: data from an instruction, the PSR models, training, evaluation and checks."""
