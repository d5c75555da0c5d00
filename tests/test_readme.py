"""The README and the pages under docs/ stay true: every option they name exists, every link between them resolves,
the README stays short, its install matches CI's, and CI runs its test command."""

import functools
import importlib.util
import re
from pathlib import Path

import pytest
from conftest import REPO

from recipe.config import all_option_specs

README = REPO / "README.md"
DOCS = REPO / "docs"
# Every check that applies to the README applies to each page under docs/ as well.
PAGES = [README, *sorted(DOCS.glob("*.md"))]
PAGE_IDS = [str(page.relative_to(REPO)) for page in PAGES]
# Written by the options-page generator from the dataclasses' help; its existence is asserted on its own below.
OPTIONS_PAGE = DOCS / "options.md"
README_MAX_LINES = 250
# Paths the docs name that are not files of the repository (placeholders such as NAME.yaml aside).
NOT_FILES = {
    "benchmarks/padding_modes.py",  # folded into throughput.py; named as the origin of a kept record
    "data/d.json",  # the user's file in an example error message
}

# Flags of other tools (pip, uv, accelerate, torchrun, hf) and of the scripts' own parsers.
OTHER_FLAGS = {
    "index-url", "extra-index-url", "no-deps", "require-hashes", "local-dir", "config_file", "num_processes", "num_machines", "machine_rank", "main_process_ip",
    "main_process_port", "multi_gpu", "cpu", "nproc_per_node", "output_dir", "any_option", "shutdown_timeout",
    "retries", "timeout", "jinja", "all-extras", "python-version", "upgrade", "upgrade-package",
}
RECIPES = sorted((REPO / "recipe" / "configs").glob("*.yaml"))


@functools.lru_cache(maxsize=1)
def script_options():
    """Every flag of the scripts (as their parsers declare them: scripts/options_doc.py, which writes docs/options.md
    from them), and the flags that benchmarks declare with argparse themselves."""
    declared = set()
    for script in [*(REPO / "scripts").glob("*.py"), *(REPO / "benchmarks").glob("*.py")]:
        declared |= set(re.findall(r"add_argument\(\s*(?:\"-\w\", )?\"--([a-z_]+)\"", script.read_text()))
    options_doc = load_script("options_doc.py")
    return set(all_option_specs()) | options_doc.script_option_names() | declared


def load_script(name):
    """A script of scripts/ as a module (its `if __name__ == "__main__"` block does not run)."""
    spec = importlib.util.spec_from_file_location(f"_script_{name.removesuffix('.py')}", REPO / "scripts" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def without_code_blocks(text):
    """The page's prose and tables: fenced blocks hold shell comments (`# ...`) and output, not headings or links."""
    return re.sub(r"(?ms)^ *```.*?^ *```[^\n]*$", "", text)


def code_blocks(text):
    return re.findall(r"(?ms)^ *```[^\n]*\n(.*?)^ *```", text)


def section(text, heading):
    """The body of the `## heading` section (up to the next `## `)."""
    return text.split(f"\n## {heading}\n")[1].split("\n## ")[0]


def heading_anchor(heading):
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def github_anchors(path):
    """The anchors GitHub gives a Markdown page's headings: lower case, punctuation dropped, spaces to hyphens,
    a repeated heading numbered (-1, -2, ...)."""
    anchors, seen = set(), {}
    for heading in re.findall(r"(?m)^#{1,6} +(.+?) *#* *$", without_code_blocks(path.read_text())):
        slug = heading_anchor(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def relative_links(path):
    """(link, target file, anchor) for every link of a page that is not a web address."""
    links = re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", without_code_blocks(path.read_text()))
    for link in links:
        if re.match(r"[a-z]+:", link):
            continue
        file, _, anchor = link.partition("#")
        yield link, (path.parent / file).resolve() if file else path, anchor


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_option_named_exists(page):
    named = set(re.findall(r"(?<![\w-])--([a-z][a-z0-9_-]*)", page.read_text()))
    unknown = sorted(named - script_options() - OTHER_FLAGS)
    assert not unknown, f"{page.relative_to(REPO)} names options that do not exist: {unknown}"


def test_ci_runs_the_readme_test_command():
    command = re.search(r"## Tests\n\n```bash\n(.+?)\n```", README.read_text()).group(1)
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert command in ci_lines


def test_every_accelerate_launch_command_names_its_config_file():
    """Without --config_file, accelerate applies the user's own defaults (`accelerate config`), not the
    launch setup the docs describe."""
    texts = {path: path.read_text() for path in [*PAGES, *(REPO / "scripts").glob("*.py"),
                                                 *(REPO / "recipe" / "configs").glob("*.yaml")]}
    lines = [(path.name, line) for path, text in texts.items() for line in text.splitlines()
             if re.search(r"accelerate launch (?!--cpu --num_processes 2`)", line)]
    assert lines
    missing = [(name, line.strip()) for name, line in lines if "--config_file " not in line]
    assert not missing, f"accelerate launch without --config_file: {missing}"


def ci_install_lines():
    """The install lines of .ci/run's default (locked) mode: the README's, as written there."""
    ci = (REPO / ".ci" / "run").read_text()
    block = ci.split("# The README's install, as written there.\n")[1].split("\nelif ")[0]
    return [line.strip() for line in block.splitlines()]


def test_ci_installs_the_locked_cpu_build_of_torch():
    """PyPI's torch for Linux is the CUDA build: CI names PyTorch's CPU index beside PyPI, for torch alone, and takes
    torch's version, like every other package's, from the lock."""
    torch_line, package_line = ci_install_lines()
    assert "--no-deps -c requirements/lock.txt torch " in torch_line
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in torch_line
    assert package_line == 'python -m pip install --quiet -c requirements/lock.txt -e ".[dev]"'


def test_the_readme_installs_as_ci_does():
    """The README's install lines are CI's (less `python -m` and `--quiet`): the lock, PyTorch's CPU index beside
    PyPI, and few retries, so an unreachable index costs two short tries instead of replacing PyPI."""
    install = section(README.read_text(), "Install")
    readme_lines = [line.replace("python -m pip", "pip").replace(" --quiet", "") for line in ci_install_lines()]
    assert code_blocks(install)[0].splitlines() == readme_lines


def fake_wheel(folder: Path, name: str, requires: tuple[str, ...] = ()) -> None:
    """A wheel of an empty package, with its dependencies, that pip can install from a folder."""
    import zipfile

    info = f"{name}-1.0.dist-info"
    files = {
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: " + name + "\nVersion: 1.0\n"
                            + "".join(f"Requires-Dist: {dependency}\n" for dependency in requires),
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(folder / f"{name}-1.0-py3-none-any.whl", "w") as wheel:
        for path, text in files.items():
            wheel.writestr(path, text)


def test_an_unreachable_torch_index_costs_one_warning_as_the_install_line_asks_it(tmp_path):
    """pip asks every index for every package it resolves: installing torch with its dependencies from beside an
    unreachable index warned once per package (10 lines for torch). The install line asks for torch alone
    (--no-deps): one warning, two short tries. A stand-in package with three dependencies, from a local folder, with
    an index nothing answers on (a refused local port)."""
    import subprocess
    import sys

    fake_wheel(tmp_path, "standin", ("dep-a", "dep-b", "dep-c"))
    for dependency in ("dep_a", "dep_b", "dep_c"):
        fake_wheel(tmp_path, dependency)
    torch_line, _ = ci_install_lines()
    assert "--retries 1 --timeout 15 --no-deps" in torch_line

    def warnings(*flags):
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--dry-run", "--isolated", "--retries", "1", "--timeout", "15",
             *flags, "--index-url", "http://127.0.0.1:9/simple", "--find-links", str(tmp_path), "standin"],
            capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stderr.count("Retrying")

    assert warnings() == 4  # standin and each of its dependencies
    assert warnings("--no-deps") == 1


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_no_command_replaces_pypi_with_another_index(page):
    """`--index-url` makes pip look only there: where that index is unreachable, nothing installs."""
    commands = "\n".join(code_blocks(page.read_text()))
    assert not re.search(r"(?<![\w-])--index-url", commands), f"{page.relative_to(REPO)}: use --extra-index-url"


def test_the_quick_start_says_what_a_second_run_does(tmp_path):
    """Running the quick start twice stops with exit status 2 (a finished run is never overwritten): the README
    says so, with the message the recipe prints and the flag that replaces the run."""
    from recipe.config import DialogueTrainingArguments
    from recipe.common.run_dir import RunDir
    from recipe.training.output_dir import OutputDirError, RunLock, prepare_output_dir

    quick_start = section(README.read_text(), "Quick start")
    run = tmp_path / "smoke-full"
    run.mkdir()
    for name in ("run_config.yaml", "train_results.json"):
        (run / name).write_text("{}")

    class OneProcess:
        is_main_process, num_processes = True, 1

    try:
        prepare_output_dir(RunDir(run), DialogueTrainingArguments(output_dir=str(run), bf16=False), OneProcess())
    except OutputDirError as error:
        message = str(error).replace(str(run), "outputs/smoke-full")
    else:
        raise AssertionError("a finished run was not refused")
    finally:
        RunLock.release(RunDir(run))
    assert "exits with status 2" in quick_start
    assert f"error: {message}" in " ".join(quick_start.split())
    assert "--overwrite_output_dir true" in quick_start


def test_the_quick_start_shows_the_summary_a_run_prints():
    """The README's printed end of the quick start has the lines, in the layout, that a run prints today (the
    figures are one real run's)."""
    from recipe.training.summary import end_summary

    train = {key: 1234.5 for key in ("train_runtime", "train_steps_runtime", "train_evaluation_runtime",
                                     "train_checkpoint_runtime", "train_real_tokens_per_second", "peak_memory_mb",
                                     "final_train_loss", "peak_tensor_memory_mb", "memory_plan_mb")}
    train["final_train_loss_steps"] = [71, 87]
    evaluation = {"eval_token_loss": 5.0, "eval_num_tokens": 7547, "eval_perplexity": 155.5}
    printed = end_summary("outputs/smoke-full", train, evaluation).splitlines()
    number = r"\d[\d,]*(?:\.\d+)?"
    patterns = ["".join(re.escape(part) if i % 2 == 0 else number
                        for i, part in enumerate(re.split(f"({number})", line)))
                for line in printed]
    shown = code_blocks(section(README.read_text(), "Quick start"))[1].splitlines()
    start = next(i for i, line in enumerate(shown) if re.fullmatch(patterns[0], line))
    assert all(re.fullmatch(pattern, line) for pattern, line in zip(patterns, shown[start:])), (
        f"the quick start's printed summary is not what a run prints now:\n{shown[start:]}\nexpected:\n{printed}")
    assert len(shown[start:]) == len(printed)


def test_the_readme_stays_short():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to a page under docs/"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_link_resolves(page):
    """Links to files name files that exist (the options page has its own test), and anchors name a heading of
    the page they point to."""
    broken = []
    for link, target, anchor in relative_links(page):
        if target == OPTIONS_PAGE.resolve():
            continue
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in github_anchors(target):
            broken.append(f"{link}: no heading #{anchor} in {target.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_file_named_exists(page):
    """Modules, scripts, recipes and records are named by their path from the repository root: each one exists
    (a module that moved is renamed in the docs too)."""
    named = set(re.findall(r"(?<![\w/.])((?:recipe|scripts|benchmarks|tests|data|accelerate_configs)/[\w./-]+"
                           r"\.(?:py|yaml|json|md|sh|txt))\b", page.read_text()))
    missing = sorted(path for path in named - NOT_FILES if not (REPO / path).exists() and not re.search(r"\b[A-Z]+\.", path))
    assert not missing, f"{page.relative_to(REPO)} names files that do not exist: {missing}"


def test_the_layout_names_every_module():
    """docs/architecture.md's layout names every module of the package and every script, and only files that exist."""
    layout = code_blocks(section((DOCS / "architecture.md").read_text(), "Layout"))[0]
    named = set(re.findall(r"\b(\w+\.py)\b", layout))
    modules = {path.name for path in (REPO / "recipe").rglob("*.py") if path.name != "__init__.py"}
    scripts = {path.name for path in (REPO / "scripts").glob("*.py")}
    existing = {path.name for folder in ("recipe", "scripts", "benchmarks", "tests", "data")
                for path in (REPO / folder).rglob("*.py")}
    assert not (modules | scripts) - named, f"missing from the layout: {sorted((modules | scripts) - named)}"
    assert not named - existing, f"the layout names files that do not exist: {sorted(named - existing)}"


def test_the_readme_links_every_docs_page():
    linked = {target for _, target, _ in relative_links(README)}
    index = {target for _, target, _ in relative_links(DOCS / "index.md")}
    pages = {page.resolve() for page in DOCS.glob("*.md")} | {OPTIONS_PAGE.resolve()}
    assert not pages - linked, f"docs pages missing from the README's index: {sorted(pages - linked)}"
    assert not pages - index - {(DOCS / 'index.md').resolve()}, "docs pages missing from docs/index.md"


@pytest.mark.parametrize("recipe", RECIPES, ids=[path.name for path in RECIPES])
def test_recipe_comments_point_to_sections_that_exist(recipe):
    """A recipe comment's pointer to a section (`README: Heading`, `the README, Heading`, `docs/page.md: Heading` or
    `docs/page.md#anchor`) names a heading of that page: sections move between the README and docs/."""
    references = re.findall(r"\b(README|docs/[\w-]+\.md)(?:[:,] ([A-Z][^)\n.]*)|#([\w-]+))", recipe.read_text())
    stale = [f"{page}: {heading or anchor}" for page, heading, anchor in references
             if (heading_anchor(heading) if heading else anchor) not in github_anchors(
                 README if page == "README" else REPO / page)]
    assert not stale, f"{recipe.name} points to sections that do not exist: {stale}"


def test_the_docs_run_an_exported_file_as_export_gguf_prints():
    """Every llama-cli chat command of the docs is the one scripts/export_gguf.py prints after an export (the file's
    path aside): `--jinja` makes older llama.cpp releases apply the file's chat template too."""
    from recipe.export.gguf_export import ExportResult, format_export

    gguf = Path("FILE.gguf")
    printed = format_export(ExportResult(gguf, gguf.with_suffix(".Modelfile"), "q8_0", 1, "llama", "lora", "ChatML"))
    (command,) = [line.removeprefix("llama.cpp: ") for line in printed.splitlines() if line.startswith("llama.cpp: ")]
    shown = [re.sub(r"-m \S+", f"-m {gguf}", line.split("#")[0].strip()) for page in PAGES
             for block in code_blocks(page.read_text()) for line in block.splitlines()
             if line.startswith("llama-cli") and " -cnv" in line]
    assert shown and all(line == command for line in shown), f"the docs: {shown}; export_gguf.py prints: {command}"


def test_the_options_page_exists():
    assert OPTIONS_PAGE.exists(), "docs/options.md (generated from the dataclasses' help) is missing"
