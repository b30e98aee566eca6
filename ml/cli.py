"""`python -m ml <step>`: the contract between Airflow and a pod. Steps load lazily so that
`--help` is instant and a step pays only for its own imports."""

from __future__ import annotations

import importlib
import logging
import os
import sys

# step name -> (module, one-line help). Each module exposes `main(argv: list[str]) -> int`.
STEPS: dict[str, tuple[str, str]] = {
    "demo-data": ("ml.demo.seed", "generate demo posts into MySQL and photos into the image store"),
    "etl": (
        "ml.ingest.shards",
        "extract, validate (whole or sharded), sanitise and write one window of posts to the lake",
    ),
    "check-source": (
        "ml.ingest.source_check",
        "re-read a sample of posts from MySQL: did a count move without updated_at?",
    ),
    "embed": ("ml.features.embed", "image (ResNet50) and caption (MiniLM) features of one day"),
    "tune-bins": ("ml.learn.labels", "propose comment-count bin edges from a window's histogram"),
    "train": ("ml.learn.train", "train the engagement classifier and its baselines on a window"),
    "report": (
        "ml.report.weekly",
        "build, archive, log and email the weekly model report of a week",
    ),
    "promote": ("ml.learn.promote", "promote a registered model version to champion if it passes"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(
        level=os.environ.get("POSTFLOW_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in STEPS:
        width = max(map(len, STEPS))
        lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in STEPS.items()]
        print("usage: python -m ml <step> [options]\n\nsteps:\n" + "\n".join(lines))
        if argv and argv[0] not in {"-h", "--help"}:
            print(f"\nunknown step {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    module = importlib.import_module(STEPS[argv[0]][0])
    return module.main(argv[1:])
