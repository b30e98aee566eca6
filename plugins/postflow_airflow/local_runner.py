"""The local step runner: `python -m ml <step>` in a subprocess of the task (compose's workers,
`make up`, `make demo`). The child gets the task's environment plus every setting as `POSTFLOW_*`
(the `posts_mysql` connection included); its output streams into the task log, its progress
lines to their own logger, a failure ends with the tail of its stderr, and its last stdout line
(JSON) is the task's return value."""

from __future__ import annotations

import functools
import json
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from postflow_airflow.links import MLflowRunLink
from postflow_airflow.settings import POSTS_MYSQL_CONN_ID, settings_env

if TYPE_CHECKING:
    from airflow.sdk import Context


# A step's progress lines (`ml.progress`: count, rate, ETA) go to this logger of their own, so a
# quiet Airflow (the demo's WARNING) can still show them: namespace_levels `postflow.progress=INFO`.
PROGRESS_LOGGER = "postflow.progress"
PROGRESS_MARK = " ml.progress: "
STDERR_TAIL_LINES = 30


class MLStepFailed(AirflowException):
    """`python -m ml <step>` exited non-zero; the message ends with the tail of its stderr."""


def parse_result(line: str | None) -> Any:
    """A step's result: its last stdout line as JSON, None when that is not JSON."""
    if not line:
        return None
    try:
        return json.loads(line)
    except ValueError:
        return None


def exit_reason(rc: int) -> str:
    """How a step ended, for the task's error: a negative code is the signal that killed it
    (SIGKILL is what the kernel's OOM killer sends, so say so)."""
    if rc >= 0:
        return f"exited with {rc}"
    try:
        name = signal.Signals(-rc).name
    except ValueError:
        name = f"signal {-rc}"
    if -rc == signal.SIGKILL:
        return f"was killed by {name} (out of memory? the kernel's OOM killer sends SIGKILL)"
    return f"was killed by {name}"


def check_step(step: str) -> None:
    """Fail at parse time on a step `python -m ml` does not have."""
    from ml.cli import STEPS

    if step not in STEPS:
        raise ValueError(f"unknown ml step {step!r}; known: {sorted(STEPS)}")


class MLStepOperator(BaseOperator):
    """Run `python -m ml <step> *arguments` in a subprocess of the task; return its JSON result.

    :param step: an `ml` CLI step (`ml.cli.STEPS`).
    :param arguments: the step's arguments (templated: `{{ ds }}`, `{{ data_interval_start }}`);
        expand over it to run one task per argument list.
    :param gpu: whether the step wants a GPU (informative here; the child picks its device).
    :param env: extra environment variables for the child.
    :param mysql_conn_id: the Airflow connection whose credentials reach the child as
        POSTFLOW_MYSQL_URI.
    """

    template_fields: Sequence[str] = ("arguments",)
    template_fields_renderers = {"arguments": "py"}
    operator_extra_links = (MLflowRunLink(),)
    ui_color = "#e8f4ea"

    def __init__(
        self,
        *,
        step: str,
        arguments: Sequence[str] | None = None,
        gpu: bool = False,
        env: dict[str, str] | None = None,
        mysql_conn_id: str = POSTS_MYSQL_CONN_ID,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_step(step)
        self.step = step
        # an XComArg (resolved when the task renders its templates) or a list of strings
        self.arguments = arguments if hasattr(arguments, "resolve") else list(arguments or [])
        self.gpu = gpu
        self.env = dict(env or {})
        self.mysql_conn_id = mysql_conn_id
        self._proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "ml", self.step, *map(str, self.arguments)]

    def execute(self, context: Context) -> Any:
        from postflow_airflow.settings import task_settings

        env = {
            **os.environ,
            **settings_env(task_settings(self.mysql_conn_id)),
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        cmd = self.command()
        self.log.info("running %s", shlex.join(["python", *cmd[1:]]))
        last, tail, rc = self._run(cmd, env)
        if rc != 0:
            raise MLStepFailed(
                f"python -m ml {self.step} {exit_reason(rc)}; stderr tail:\n" + "\n".join(tail)
            )
        result = parse_result(last)
        if result is None:
            self.log.warning("python -m ml %s printed no JSON result: no XCom", self.step)
        return result

    def _run(self, cmd: list[str], env: dict[str, str]) -> tuple[str, deque[str], int]:
        """Run `cmd`, logging its stdout and stderr lines as they come (all from this thread)."""
        lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
        last, tail = "", deque(maxlen=STDERR_TAIL_LINES)
        self._proc = proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        try:
            pumps = [
                threading.Thread(target=_pump, args=(stream, name, lines), daemon=True)
                for stream, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr"))
            ]
            for t in pumps:
                t.start()
            open_streams = len(pumps)
            while open_streams:
                name, line = lines.get()
                if line is None:
                    open_streams -= 1
                    continue
                _, mark, progress = line.partition(PROGRESS_MARK)
                if mark:
                    _progress_log().info(progress)
                else:
                    self.log.info("%s", line)
                if name == "stderr":
                    tail.append(line)
                elif line.strip():
                    last = line.strip()
            return last, tail, proc.wait()
        finally:
            _stop(proc)
            self._proc = None

    def on_kill(self) -> None:
        if self._proc is not None:
            _stop(self._proc)


@functools.cache
def _progress_log() -> Any:
    import structlog  # Airflow's logging: namespace_levels applies to its named loggers

    return structlog.get_logger(PROGRESS_LOGGER)


def _pump(stream: Iterable[str], name: str, lines: queue.Queue) -> None:
    try:
        for line in stream:
            lines.put((name, line.rstrip("\r\n")))
    finally:
        lines.put((name, None))


def _stop(proc: subprocess.Popen, grace_s: float = 10) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
