"""Supervised fine-tuning baselines beside steering (LoRA with PEFT: ``pip install 'steerlab[finetune]'``).

Example::

    from steerlab.finetune.lora import LoraSettings, fit_lora
    fit = fit_lora(model, tok, splits.train, splits.val, fmt, LoraSettings(max_epochs=2))
    print(fit.report.learning_rate, fit.report.epochs, fit.report.val_accuracy)
"""
