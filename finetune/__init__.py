"""Finetuning: one run (config, the method's model, the loop, its result and artifacts) from a
pretraining checkpoint; `python -m finetune.run`. The study runs many of them."""
