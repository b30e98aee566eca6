"""Print requirements of postflow as pyproject.toml lists them, one a line, for `pip install -r`.

    python extras.py [--pyproject PATH] [--extras-only] EXTRA...

prints `[project] dependencies` and then each named extra's requirements; `--extras-only` leaves
`dependencies` out (the MLflow server image installs its extra without postflow). The Dockerfile
installs this output against the lock before it copies the code, so that an image's dependency
layer outlives code changes; postflow itself then installs with --no-deps. Standard library
only: it runs on a bare Python 3.11.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str], *, extras_only: bool = False) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"{pyproject}: no extra {', '.join(unknown)}; known: {sorted(optional)}")
    out = [] if extras_only else list(project.get("dependencies", []))
    for extra in extras:
        out += optional[extra]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("extras", nargs="*", metavar="EXTRA")
    parser.add_argument(
        "--pyproject", type=Path, default=Path(__file__).resolve().parent.parent / "pyproject.toml"
    )
    parser.add_argument("--extras-only", action="store_true")
    args = parser.parse_args(argv)
    for line in requirements(args.pyproject, args.extras, extras_only=args.extras_only):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
