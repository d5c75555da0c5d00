"""The README stays true: every option it names exists, and CI runs its test command."""

import re

from conftest import REPO
import dataclasses

from recipe.config import RECIPE_DATACLASSES

# Flags of other tools (pip, accelerate, torchrun, hf) and of the scripts' own parsers.
OTHER_FLAGS = {
    "index-url", "local-dir", "config_file", "num_processes", "num_machines", "machine_rank", "main_process_ip",
    "main_process_port", "multi_gpu", "cpu", "nproc_per_node", "output_dir", "any_option", "shutdown_timeout",
}


def script_options():
    """Every flag of the scripts: the fields of the option dataclasses, --config / --help, and the flags
    that scripts and benchmarks declare with argparse themselves."""
    declared = set()
    for script in [*(REPO / "scripts").glob("*.py"), *(REPO / "benchmarks").glob("*.py")]:
        declared |= set(re.findall(r"add_argument\(\s*(?:\"-\w\", )?\"--([a-z_]+)\"", script.read_text()))
    return {f.name for dc in RECIPE_DATACLASSES for f in dataclasses.fields(dc)} | {"config", "help"} | declared


def test_every_option_in_the_readme_exists():
    readme = (REPO / "README.md").read_text()
    named = set(re.findall(r"(?<![\w-])--([a-z][a-z0-9_-]*)", readme))
    unknown = sorted(named - script_options() - OTHER_FLAGS)
    assert not unknown, f"README names options that do not exist: {unknown}"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    command = re.search(r"## Tests\n\n```bash\n(.+?)\n```", readme).group(1)
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert command in ci_lines
