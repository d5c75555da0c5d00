"""Options of the sweep script: which recipe pair, which grid, where the runs go, how they are tracked."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import raise_all

# Full fine-tuning and two LoRA ranks, each at half, once and twice its recipe's own learning rate: 9 runs.
DEFAULT_GRID = ("mode=full,lora", "lora_r=8,32", "learning_rate_scale=0.5,1,2")
MODES = ("full", "lora")


def split_train_options(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the sweep's own options, the training options after `--`)."""
    if "--" not in argv:
        return argv, []
    at = argv.index("--")
    return argv[:at], argv[at + 1:]


def parse_axis(spec: str) -> tuple[str, list[str]]:
    """`AXIS=V1,V2` -> (AXIS, [V1, V2]); the error names the spec and the fix."""
    name, sep, values = spec.partition("=")
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not name.strip() or not items:
        raise ValueError(f"grid axis {spec!r} is not AXIS=V1,V2,...; e.g. lora_r=8,16 or learning_rate_scale=0.5,1")
    return name.strip(), items


@dataclass
class SweepArguments:
    """A grid of training runs over a full / LoRA recipe pair, run one after another, each evaluated, then
    compared in one report (recipe/comparison/sweep.py)."""

    help_group = "Sweep"

    full_recipe: str = field(
        default="recipe/configs/smoke.yaml", metadata={"help": "The recipe of the full fine-tuning cells."}
    )
    lora_recipe: str = field(
        default="recipe/configs/smoke-lora.yaml", metadata={"help": "The recipe of the LoRA cells (use_lora true)."}
    )
    grid: list[str] | None = field(
        default=None,
        metadata={
            "help": "Grid axes, AXIS=V1,V2,...; every combination is one run (a cell). `mode` (full, lora) picks "
            "the recipe; `learning_rate_scale` multiplies each recipe's own learning_rate; any other axis is a "
            "recipe option (lora_* options apply to LoRA cells only). An axis given replaces the default axis of "
            f"that name; the defaults: {' '.join(DEFAULT_GRID)}."
        },
    )
    sweep_dir: str | None = field(
        default=None,
        metadata={"help": "Where the runs (one folder per cell), sweep.json and the report go (default: "
                          "outputs/sweep-NAME, NAME from the full recipe's file name without -full)."},
    )
    sweep_name: str | None = field(
        default=None, metadata={"help": "The sweep's name: its W&B group and report title (default: sweep_dir's name)."}
    )
    use_wandb: bool = field(
        default=False,
        metadata={"help": "Log every run to W&B (online when possible, else offline), in one group per sweep, "
                          "tagged with its cell; otherwise no run reports to W&B."},
    )
    evaluate: bool = field(
        default=True, metadata={"help": "Run scripts/evaluate.py on each finished run (per-speaker perplexity, "
                                        "clean ends, distinct-2 in the report)."}
    )
    evaluate_options: str = field(
        default="",
        metadata={"help": "Options for scripts/evaluate.py, as one string: --evaluate_options='--num_samples 16'."},
    )
    train_options: list[str] | None = field(
        default=None,
        metadata={"help": "Options every run gets (a YAML list; on the command line put them after --, e.g. "
                          "-- --max_steps 50). They may not set an axis of the grid."},
    )
    launcher: str | None = field(
        default=None,
        metadata={"help": "The command that runs the training script, e.g. 'accelerate launch --config_file "
                          "accelerate_configs/multi_gpu.yaml' or 'torchrun --nproc_per_node 2' (default: this "
                          "Python)."},
    )
    train_script: str = field(
        default="scripts/train.py",
        metadata={"help": "The training script each run calls (or a wrapper taking the same options)."},
    )
    retry_failed: bool = field(
        default=False,
        metadata={"help": "Train again the cells that failed before (a diverged run, say); by default a rerun "
                          "keeps their failure and only resumes interrupted or unstarted cells."},
    )
    dry_run: bool = field(default=False, metadata={"help": "List the cells and their commands; run nothing."})

    def __post_init__(self) -> None:
        errors = []
        axes: dict[str, list[str]] = {}
        for spec in self.grid or []:
            try:
                name, values = parse_axis(spec)
            except ValueError as error:
                errors.append(str(error))
                continue
            axes[name] = values
        unknown_modes = [m for m in axes.get("mode", []) if m not in MODES]
        if unknown_modes:
            errors.append(f"grid axis mode has {unknown_modes}; its values are full and lora")
        for value in axes.get("learning_rate_scale", []):
            try:
                if float(value) <= 0:
                    raise ValueError
            except ValueError:
                errors.append(f"grid axis learning_rate_scale has {value!r}; use positive numbers, e.g. 0.5,1,2")
        if "learning_rate" in axes and "learning_rate_scale" in axes:
            errors.append("the grid sets both learning_rate and learning_rate_scale; keep one (learning_rate=... "
                          "gives every cell the same rates, learning_rate_scale=... scales each recipe's own)")
        raise_all(errors)
