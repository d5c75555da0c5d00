"""dialogue-finetune: fine-tune and evaluate causal LMs on multi-speaker dialogue with the HF Trainer.

One package per stage, each importing only the ones before it (`.importlinter` holds the order):
`common` < `config` < `data` < `models` < `memory` < `tracking` < `evaluation` | `export` < `training` <
`comparison`. Importing this package imports none of them.
"""
