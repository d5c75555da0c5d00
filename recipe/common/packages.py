"""The installed Python packages as pins, and what differs between two sets of pins.

One shape serves three readers: the repository's lock (requirements/lock.txt, written by uv), a run's own lock
(RUN/requirements.lock.txt, what that run was installed with) and the newest-versions check of .ci/run. A pin file is
a pip requirements file of `name==version` lines; pip turns it back into the same versions (`pip install -r`, or
`-c` to constrain an install of the project). Read without importing anything heavy.

    python -m recipe.common.packages requirements/lock.txt    # what the installed packages change from a lock
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

PROJECT = "dialogue-finetune"  # installed from the repository at the run's commit, not from a pin
# PyTorch publishes each build under a local version label (2.13.0+cpu, 2.13.0+cu128) on its own index: the index a
# run's lock names so that `pip install -r` finds that build again.
TORCH_INDEX = "https://download.pytorch.org/whl/{label}"
Difference = tuple[str, "str | None", "str | None"]  # (name, recorded version, installed version)
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*===?\s*([^\s;#]+)")


def canonical_name(name: str) -> str:
    """PEP 503's normalised name: Flask_SQLAlchemy and flask-sqlalchemy are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_packages() -> dict[str, str]:
    """Every distribution installed in this environment, by canonical name (the project itself aside)."""
    packages = {}
    for distribution in importlib.metadata.distributions():
        name = distribution.metadata["Name"]
        if name and canonical_name(name) != PROJECT:
            packages[canonical_name(name)] = distribution.version
    return dict(sorted(packages.items()))


def read_pins(path: str | Path) -> dict[str, str]:
    """The `name==version` lines of a requirements or constraints file, by canonical name (options, comments and
    markers aside)."""
    pins = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        match = _PIN.match(line.strip())
        if match:
            pins[canonical_name(match.group(1))] = match.group(2)
    return pins


def pins_text(packages: dict[str, str], header: str = "") -> str:
    """A requirements file pip installs back into `packages`; a torch build with a local label (+cpu, +cu128) gets
    PyTorch's index for that build, as pip would not find it on PyPI."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    torch_label = packages.get("torch", "").partition("+")[2]
    if torch_label:
        lines.append(f"--extra-index-url {TORCH_INDEX.format(label=torch_label)}")
    lines += [f"{name}=={version}" for name, version in sorted(packages.items())]
    return "\n".join(lines) + "\n"


def same_version(pinned: str, installed: str) -> bool:
    """A pin without a local label (torch==2.13.0) matches any build of that version (2.13.0+cpu), as pip's does."""
    return installed == pinned or ("+" not in pinned and installed.partition("+")[0] == pinned)


def version_differences(recorded: dict[str, str], installed: dict[str, str]) -> list[Difference]:
    """(name, recorded version, installed version) of each package whose version differs or that one side lacks."""
    return [(name, recorded.get(name), installed.get(name)) for name in sorted(set(recorded) | set(installed))
            if recorded.get(name) is None or installed.get(name) is None
            or not same_version(recorded[name], installed[name])]


def describe_differences(differences: list[Difference], recorded: str = "recorded") -> list[str]:
    """Changed versions a line each (`transformers: 5.24.0 recorded, 5.25.0 installed`), then the packages only one
    side has on a line each side (a CUDA build's libraries in a CPU install, the installer's own tools)."""
    changed = [f"{name}: {was} {recorded}, {now} installed" for name, was, now in differences if was and now]
    missing = [f"{name}=={was}" for name, was, now in differences if now is None]
    extra = [f"{name}=={now}" for name, was, now in differences if was is None]
    return changed + ([f"{recorded}, not installed: {', '.join(missing)}"] if missing else []) \
        + ([f"installed, not {recorded}: {', '.join(extra)}"] if extra else [])


def main(lock: str) -> int:
    """Print what the installed packages change from `lock` (the newest-versions check's report)."""
    differences = version_differences(read_pins(lock), installed_packages())
    changed = sum(1 for _, was, now in differences if was and now)
    print(f"{changed} installed versions differ from {lock}" + (":" if differences else ""))
    for line in describe_differences(differences, recorded="locked"):
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2] or ["requirements/lock.txt"]))
