"""Data: contrastive pairs and multiple-choice items from files, prompts and chat templates, built-in tasks."""
