"""The checkpoint leaf: orbax training checkpoints (write, list, find, load), exported models
and finetuning adapters, and atomic file writes. Imports only `model` of this project, so
train, finetune, eval and study all load models the same way.

CLI: `python -m checkpoints list --workdir=DIR`, `python -m checkpoints export --workdir=DIR --tokens=T --out=PATH`.
"""
