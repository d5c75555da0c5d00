"""The dependency sets .ci/run installs besides the lock, read from setup.cfg's ranges (standard library only: it runs
before anything is installed).

    python3 .ci/dependency_sets.py torch     # torch's range, for the install line that takes the CPU build
    python3 .ci/dependency_sets.py lowest    # name==lower bound of every direct dependency (a constraints file)
"""

from __future__ import annotations

import configparser
import re
import sys
from pathlib import Path

SETUP_CFG = Path(__file__).resolve().parents[1] / "setup.cfg"
_REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*([^;#]*)")


def direct_requirements() -> list[tuple[str, str]]:
    """(name, specifier) of install_requires and of every extra, in setup.cfg's order, each name once."""
    config = configparser.ConfigParser()
    config.read(SETUP_CFG, encoding="utf-8")
    blocks = [config["options"]["install_requires"], *config["options.extras_require"].values()]
    requirements: dict[str, str] = {}
    for block in blocks:
        for line in block.splitlines():
            match = _REQUIREMENT.match(line.strip())
            if match and not line.strip().startswith("#"):
                requirements.setdefault(match.group(1).lower(), match.group(2).strip())
    return list(requirements.items())


def lower_bound(specifier: str) -> str:
    match = re.search(r">=\s*([^,\s]+)", specifier)
    if not match:
        raise SystemExit(f"setup.cfg: {specifier!r} has no lower bound (>=): every dependency needs one")
    return match.group(1)


def main(which: str) -> int:
    requirements = direct_requirements()
    if which == "torch":
        print("torch" + dict(requirements)["torch"].replace(" ", ""))
    elif which == "lowest":
        print("# setup.cfg's lower bounds (python3 .ci/dependency_sets.py lowest)")
        print("\n".join(f"{name}=={lower_bound(specifier)}" for name, specifier in requirements))
    else:
        raise SystemExit(f"usage: {sys.argv[0]} torch|lowest")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ""))
