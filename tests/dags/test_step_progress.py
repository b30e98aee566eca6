"""A step's progress lines reach a logger of their own (`postflow.progress`), so the quiet demo
(Airflow at WARNING, that logger at INFO) shows posts/s and ETA while embedding."""

from __future__ import annotations

import sys

CHILD = """
import logging
logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
logging.getLogger("ml.progress").info("embed ds=D: 32/96 posts, 8 posts/s, ETA 8s")
logging.getLogger("ml.features.embed").info("an ordinary line")
print('{"ok": 1}')
"""


def test_progress_lines_go_to_their_own_logger(monkeypatch):
    from postflow_airflow import local_runner

    seen: list[str] = []

    class Recorder:
        def info(self, msg: str) -> None:
            seen.append(msg)

    monkeypatch.setattr(local_runner, "_progress_log", lambda: Recorder())
    op = local_runner.MLStepOperator(task_id="embed", step="embed", arguments=[])
    monkeypatch.setattr(op, "command", lambda: [sys.executable, "-c", CHILD])
    assert op.execute({}) == {"ok": 1}
    assert seen == ["embed ds=D: 32/96 posts, 8 posts/s, ETA 8s"]


def test_the_demo_shows_that_logger():
    from pathlib import Path

    from postflow_airflow.local_runner import PROGRESS_LOGGER

    demo = (Path(__file__).resolve().parents[2] / "tools" / "demo.py").read_text()
    assert f'"AIRFLOW__LOGGING__NAMESPACE_LEVELS": "{PROGRESS_LOGGER}=INFO"' in demo
