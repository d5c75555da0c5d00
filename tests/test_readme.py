"""The README stays true: every option it names exists, and CI runs its test command."""

import re

from conftest import REPO
import dataclasses

from recipe.config import RECIPE_DATACLASSES

# Flags of other tools (pip, accelerate, torchrun, hf) and of the scripts' own parsers.
OTHER_FLAGS = {
    "index-url", "extra-index-url", "no-deps", "require-hashes", "local-dir", "config_file", "num_processes", "num_machines", "machine_rank", "main_process_ip",
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


def test_every_accelerate_launch_command_names_its_config_file():
    """Without --config_file, accelerate applies the user's own defaults (`accelerate config`), not the
    launch setup the README describes."""
    texts = {path: path.read_text() for path in [REPO / "README.md", *(REPO / "scripts").glob("*.py"),
                                                 *(REPO / "recipe" / "configs").glob("*.yaml")]}
    lines = [(path.name, line) for path, text in texts.items() for line in text.splitlines()
             if re.search(r"accelerate launch (?!--cpu --num_processes 2`)", line)]
    assert lines
    missing = [(name, line.strip()) for name, line in lines if "--config_file " not in line]
    assert not missing, f"accelerate launch without --config_file: {missing}"


def test_ci_installs_the_pinned_cpu_build_of_torch():
    """PyPI's torch for Linux is the CUDA build: CI must name PyTorch's CPU index beside the pin."""
    ci = (REPO / ".ci" / "run").read_text()
    install = [line for line in ci.splitlines() if re.search(r"pip install .*torch==", line)]
    assert len(install) == 1
    assert '"torch==2.13.0"' in install[0]
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in install[0]


def test_the_quick_start_says_what_a_second_run_does(tmp_path):
    """Running the quick start twice stops with exit status 2 (a finished run is never overwritten): the README
    says so, with the message the recipe prints and the flag that replaces the run."""
    from recipe.config import DialogueTrainingArguments
    from recipe.output_dir import OutputDirError, prepare_output_dir

    readme = (REPO / "README.md").read_text()
    quick_start = readme.split("## Quick start")[1].split("\n## ")[0]
    run = tmp_path / "smoke-full"
    run.mkdir()
    for name in ("run_config.yaml", "train_results.json"):
        (run / name).write_text("{}")

    class OneProcess:
        is_main_process, num_processes = True, 1

    try:
        prepare_output_dir(DialogueTrainingArguments(output_dir=str(run), bf16=False), OneProcess())
    except OutputDirError as error:
        message = str(error).replace(str(run), "outputs/smoke-full")
    else:
        raise AssertionError("a finished run was not refused")
    finally:
        from recipe.output_dir import RunLock
        from recipe.run_dir import RunDir

        RunLock.release(RunDir(run))
    assert "exits with status 2" in quick_start
    assert f"error: {message}" in " ".join(quick_start.split())
    assert "--overwrite_output_dir true" in quick_start
