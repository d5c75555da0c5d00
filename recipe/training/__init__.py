"""Training: `run_training` (scripts/train.py, in `run`) and what a run needs around the Trainer.

- `run`: `run_training`, from the options to a finished run directory; its data, model, records and results.
- `trainer`: `DialogueTrainer`, the HF Trainer with the recipe's loss, token count, safeguards and timing.
- `summary`: the start-up and end summaries a run prints.
- `output_dir`: one run at a time per output directory, decided once, writable, with room.
- `resume`: a resume is the same run only with the same recipe: checked, and recorded.
- `safeguards`: stopping cleanly on SIGTERM or Ctrl-C, and on a loss that is no longer finite.
- `timing`: the time of training steps, evaluation and checkpoints, apart.
- `environment`: the run's record of versions, device, code and data (environment.json), and its peak memory.
- `fsdp_on_cpu`: FSDP on CPU processes, as on GPUs.

Nothing is imported here: the Trainer's import starts transformers' integrations (W&B prints that it is offline),
which taking the run lock (`output_dir`) or reading a summary must not pay for. Import from the modules.
"""
