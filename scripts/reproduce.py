"""Re-check a recorded run: what this install changes from its records, then its first steps replayed, losses compared.

    python scripts/reproduce.py outputs/smoke-full                # up to the run's third logged loss
    python scripts/reproduce.py outputs/smollm2-lora --steps 20   # the first 20 steps
    python scripts/reproduce.py outputs/smoke-full --steps 0      # the records only: packages, data, device, code

Lists each difference by name: a package version (against the run's requirements.lock.txt), a data file's SHA-256,
the device, the code's commit, an option the replay used otherwise. Then replays the run's run_config.yaml, with the
run's own launcher and learning-rate schedule, for N steps into a temporary folder, and compares the logged losses
with the run's trainer_state.json. Exit 0 when they are equal (to the last digit, or within --tolerance), 1 with a
one-line reason otherwise. Run it from the repository root, as the run was.
"""

import argparse
import sys
from pathlib import Path

from recipe.common.cli import say, setup_logging, user_errors
from recipe.config.command_line import OptionsParser

TRAIN_SCRIPT = Path(__file__).with_name("train.py")


def main(run_dir: str, steps: int | None, tolerance: float) -> int:
    import shutil

    from recipe.training.reproduce import reproduce  # torch: after the command line is accepted

    train_script = TRAIN_SCRIPT.relative_to(Path.cwd()) if TRAIN_SCRIPT.is_relative_to(Path.cwd()) else TRAIN_SCRIPT
    result = reproduce(run_dir, steps, train_script, tolerance, echo=print)
    if result.reproduced:
        if result.replay_dir is not None:
            shutil.rmtree(result.replay_dir.parent, ignore_errors=True)
        print("reproduced" if result.replay_dir else "the records match this install (nothing replayed: --steps 0)")
        return 0
    kept = f" (replay kept in {result.replay_dir})" if result.replay_dir and result.replay_dir.exists() else ""
    say(f"not reproduced: {result.reason}{kept}")
    return 1


def parser() -> argparse.ArgumentParser:
    options = OptionsParser(prog="scripts/reproduce.py", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_argument("run_dir", help="a training output directory (finished, or with a checkpoint)")
    options.add_argument("--steps", type=int, default=None,
                         help="replay this many optimizer steps (default: up to the run's third logged loss; 0: "
                              "compare the records only)")
    options.add_argument("--tolerance", type=float, default=0.0,
                         help="largest relative difference of a loss still counted as reproduced (default: 0, equal "
                              "to the last digit; GPU runs without --full_determinism need more)")
    return options


if __name__ == "__main__":
    setup_logging()
    with user_errors():
        arguments = parser().parse_args()
        if arguments.steps is not None and arguments.steps < 0:
            parser().error(f"--steps is {arguments.steps}; use 0 or more")
        sys.exit(main(arguments.run_dir, arguments.steps, arguments.tolerance))
