"""Running the model: batched activation capture, block replay, scoring, the replay sweep, generation."""
