"""Faults injected into real processes (issue 13 §1): the lake's disk full, the step killed
between writing files and committing, two writers of one day, the S3 endpoint cut mid-write,
MySQL killed or unreachable mid-extract, the SMTP server refusing. Each test breaks the real
component at a chosen moment (synchronised on an observable event, never a sleep) and checks the
invariants: nothing lost, nothing duplicated, the previous good partition never damaged, a clear
error, and the retry completes the work."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from ml.config import Settings
from ml.ingest.etl import reconcile, run_etl
from ml.lake.partitions import Lake
from tests.conftest import REPO, VENV_BIN
from tests.integration.test_etl_stages import DAY, WINDOW, ids_of, insert, row

pytestmark = [pytest.mark.integration, pytest.mark.faults]

NOW = DAY + (WINDOW.end - WINDOW.start) * 2
DATASETS = ("posts_raw", "posts_clean", "quarantine")


@pytest.fixture
def settings(stage_settings) -> Settings:
    return stage_settings(extract_chunk_rows=4)


def day_rows(ids: range) -> list[tuple]:
    return [row(i, DAY + (WINDOW.end - WINDOW.start) * (i % 20) / 24) for i in ids]


def snapshot(lake: Lake) -> dict[str, tuple[str, list[int]]]:
    """dataset -> (committed run id, sorted ids) of DAY."""
    return {d: (lake.read_manifest(d, DAY)["run_id"], ids_of(lake, d)) for d in DATASETS}


def step_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = os.environ.copy() | {
        "POSTFLOW_MYSQL_URI": settings.mysql_uri,
        "POSTFLOW_LAKE": settings.lake,
        "POSTFLOW_IMAGE_ROOT": settings.image_root,
        "POSTFLOW_IMAGE_WORKERS": "1",
        "POSTFLOW_EXTRACT_CHUNK_ROWS": str(settings.extract_chunk_rows),
        "POSTFLOW_CONFIG": "",
        "PYTHONPATH": str(REPO),
    }
    if settings.s3_endpoint:
        env["POSTFLOW_S3_ENDPOINT"] = settings.s3_endpoint
    return env | extra


ETL = [str(VENV_BIN / "python"), "-m", "ml", "etl", "--start", DAY.date().isoformat()]

# A step, run as `python -m ml ...`, that stops at a chosen call ($PF_PAUSE_AT, `module:attr`
# or `module:Class.method`), before it (or after it, with $PF_PAUSE_AFTER=1): it writes
# $PF_MARKER and waits for a line "go" on stdin. The test breaks something, then says go.
# The lake's PartitionWriter.commit first closes its data files (finish): the pause is then
# exactly between writing the files and writing the manifest.
PAUSED = """
import functools, importlib, os, sys
from pathlib import Path
mod_name, attr = os.environ["PF_PAUSE_AT"].split(":")
owner = importlib.import_module(mod_name)
*path, name = attr.split(".")
for part in path:
    owner = getattr(owner, part)
orig = getattr(owner, name)
after = os.environ.get("PF_PAUSE_AFTER") == "1"
def pause(note):
    Path(os.environ["PF_MARKER"]).write_text(note)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("not told to go on")
@functools.wraps(orig)
def paused(*args, **kwargs):
    note = attr
    if attr == "PartitionWriter.commit":
        note = args[0].dataset + " " + " ".join(args[0].finish())
    if not after:
        pause(note)
    out = orig(*args, **kwargs)
    if after:
        pause(note)
    return out
setattr(owner, name, paused)
from ml.cli import main
sys.exit(main(sys.argv[1:]))
"""


def paused_run(
    argv: list[str], env: dict[str, str], marker: Path, at: str, after: bool = False
) -> subprocess.Popen:
    """`python -m ml <argv>` pausing at `at` (see PAUSED)."""
    extra = {"PF_MARKER": str(marker), "PF_PAUSE_AT": at, "PF_PAUSE_AFTER": "1" if after else ""}
    return subprocess.Popen(
        [str(VENV_BIN / "python"), "-c", PAUSED, *argv],
        cwd=REPO,
        env=env | extra,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def paused_step(settings: Settings, marker: Path, *args: str) -> subprocess.Popen:
    """`python -m ml etl` of DAY pausing inside its first commit, files written, no manifest."""
    return paused_run(
        [*ETL[3:], *args], step_env(settings), marker, "ml.lake.partitions:PartitionWriter.commit"
    )


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"step exited {proc.returncode}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.05)
    return path.read_text()


# -- the lake's disk full -----------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 2 MiB tmpfs (needs root: mount); unmounted whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path) -> Path:
    """Fill `disk` to the last byte; returns the filler file."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == 28  # ENOSPC
    return filler


@pytest.mark.timeout(300)
def test_disk_full_fails_cleanly_and_keeps_the_old_partition(settings, fresh_mysql_db, small_disk):
    settings = settings.replace(lake=str(small_disk / "lake"))
    insert(fresh_mysql_db, day_rows(range(1, 21)))
    run_etl(settings, WINDOW, now=NOW)
    lake = Lake.from_settings(settings)
    before = snapshot(lake)
    files_before = sorted(p.relative_to(small_disk) for p in small_disk.rglob("*.parquet"))

    insert(fresh_mysql_db, [row(i, DAY + (WINDOW.end - WINDOW.start) / 2) for i in range(21, 41)])
    filler = fill(small_disk)
    out = subprocess.run(ETL, cwd=REPO, env=step_env(settings), capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert "No space left on device" in out.stderr and "not committed" in out.stderr
    assert "Traceback" not in out.stderr
    assert snapshot(lake) == before  # the old partitions stay readable, unchanged
    files_now = sorted(p.relative_to(small_disk) for p in small_disk.rglob("*.parquet"))
    assert files_now == files_before  # the failed run left no partial file behind

    filler.unlink()  # space again: the retry completes
    out = subprocess.run(ETL, cwd=REPO, env=step_env(settings), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert ids_of(lake, "posts_raw") == list(range(1, 41))
    assert reconcile(settings, WINDOW)["rows_in"] == 40


# -- a crash between writing files and committing the manifest ----------------------------------


@pytest.mark.timeout(300)
def test_sigkill_between_files_and_manifest_keeps_the_old_partition(
    settings, fresh_mysql_db, tmp_path
):
    insert(fresh_mysql_db, day_rows(range(1, 21)))
    run_etl(settings, WINDOW, now=NOW)
    lake = Lake.from_settings(settings)
    before = snapshot(lake)
    insert(fresh_mysql_db, [row(i, DAY + (WINDOW.end - WINDOW.start) / 2) for i in range(21, 31)])

    marker = tmp_path / "at-commit"
    proc = paused_step(settings, marker, "--step", "extract")
    dataset, *files = wait_for_file(marker, proc).split()
    raw_dir = Path(settings.lake) / "posts_raw" / f"ds={DAY.date()}"
    assert dataset == "posts_raw" and files and all((raw_dir / f).exists() for f in files)
    proc.send_signal(signal.SIGKILL)  # as the OOM killer would
    assert proc.wait(timeout=30) == -signal.SIGKILL

    assert snapshot(lake) == before  # the new file is there, unlisted: readers never see it
    out = subprocess.run(ETL, cwd=REPO, env=step_env(settings), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr  # the retry commits cleanly
    assert ids_of(lake, "posts_raw") == list(range(1, 31))
    assert reconcile(settings, WINDOW)["rows_in"] == 30
    listed = set(lake.read_manifest("posts_raw", DAY)["files"])
    assert not listed & set(files)


def test_files_of_a_crashed_writer_are_removed_once_stale(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    schema = pa.schema([("id", pa.int64())])
    with lake.writer("t", DAY, schema) as w:
        w.write(pa.table({"id": [1]}))
    part = Path(lake.partition_path("t", DAY))
    fresh, stale = part / "part-crashed-fresh.parquet", part / "part-crashed-stale.parquet"
    fresh.write_bytes(b"x")
    stale.write_bytes(b"x")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    with lake.writer("t", DAY, schema) as w:
        w.write(pa.table({"id": [2]}))
    names = {p.name for p in part.iterdir()}
    assert fresh.name in names  # could be a writer still running
    assert stale.name not in names
    assert len([n for n in names if n.endswith(".parquet")]) == 2  # the new version + fresh
    assert lake.read_partition("t", DAY).column("id").to_pylist() == [2]


# -- two runs of the same day at once -------------------------------------------------------------


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_writers_of_one_partition_leave_it_whole(tmp_path, s3_server, where):
    """A backfill and a scheduled run write the same day: whichever commits last wins, whole;
    the first to commit must not delete the other's files (it did: the partition then listed a
    file that was gone)."""
    root = str(tmp_path / "lake") if where == "local" else f"s3://{s3_server.bucket()}/lake"
    lake = Lake(root, s3_server.endpoint)
    schema = pa.schema([("id", pa.int64())])
    with lake.writer("t", DAY, schema) as w:
        w.write(pa.table({"id": [0]}))
    with lake.writer("t", DAY, schema) as a, lake.writer("t", DAY, schema) as b:
        a.write(pa.table({"id": [1, 2]}))
        b.write(pa.table({"id": [3, 4]}))
        b.finish()  # b's file is complete (visible on S3 too) while a commits first
    # leaving the `with`: b (inner) commits first, then a
    assert lake.read_partition("t", DAY).column("id").to_pylist() == [1, 2]
    with lake.writer("t", DAY, schema) as a, lake.writer("t", DAY, schema) as b:
        a.write(pa.table({"id": [5]}))
        a.finish()
        b.write(pa.table({"id": [6]}))
    assert lake.read_partition("t", DAY).column("id").to_pylist() == [5]


def _writer_process(root: str, endpoint: str | None, ids: list[int], rounds: int, sync) -> None:
    """One of two processes writing the same partition: each round both write their files,
    meet, commit at the same moment, then wait while the test reads the partition."""
    written, committed, read = sync
    lake = Lake(root, endpoint)
    schema = pa.schema([("id", pa.int64())])
    for r in range(rounds):
        with lake.writer("t", DAY, schema) as w:
            w.write(pa.table({"id": [i + 1000 * r for i in ids]}))
            written.wait(60)  # both have written; leaving the `with` commits
        committed.wait(60)
        read.wait(60)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_writer_processes_committing_at_once_leave_the_partition_whole(
    tmp_path, s3_server, where
):
    """Two processes (a backfill and the scheduled run) commit the same partition at the same
    moment, round after round: the partition is always one writer's version, whole: every
    file its manifest lists exists, no post twice, none of the other's."""
    import multiprocessing

    root = str(tmp_path / "lake") if where == "local" else f"s3://{s3_server.bucket()}/lake"
    endpoint = s3_server.endpoint if where == "s3" else None
    ctx = multiprocessing.get_context("spawn")
    sync, rounds = (ctx.Barrier(2), ctx.Barrier(3), ctx.Barrier(3)), 8
    a, b = [1, 2, 3], [4, 5]
    procs = [
        ctx.Process(target=_writer_process, args=(root, endpoint, ids, rounds, sync))
        for ids in (a, b)
    ]
    for p in procs:
        p.start()
    lake = Lake(root, endpoint)
    try:
        for r in range(rounds):
            sync[1].wait(60)  # both committed this round
            got = sorted(lake.read_partition("t", DAY).column("id").to_pylist())
            assert got in ([i + 1000 * r for i in a], [i + 1000 * r for i in b]), (r, got)
            assert lake.read_manifest("t", DAY)["rows"] == len(got)
            sync[2].wait(60)
    finally:
        for p in procs:
            p.join(60)
            if p.exitcode is None:
                p.kill()
    assert [p.exitcode for p in procs] == [0, 0]


@pytest.mark.timeout(300)
def test_two_etl_runs_of_one_day_at_once(settings, fresh_mysql_db, tmp_path):
    """Two `python -m ml etl` of the same day, interleaved: both stop with their files written
    and no manifest, then both commit. Both finish; the day is whole, without duplicates."""
    insert(fresh_mysql_db, day_rows(range(1, 31)))
    procs = [paused_step(settings, tmp_path / f"m{i}") for i in range(2)]
    for i, p in enumerate(procs):
        assert wait_for_file(tmp_path / f"m{i}", p).startswith("posts_raw")
    outs = []
    for p in procs:
        outs.append(p.communicate("go\n" * 3, timeout=240))
        assert p.returncode == 0, outs[-1][1]
    lake = Lake.from_settings(settings)
    raw = ids_of(lake, "posts_raw")
    assert raw == list(range(1, 31))
    both = ids_of(lake, "posts_clean") + ids_of(lake, "quarantine")
    assert sorted(both) == raw and not [i for i, n in Counter(both).items() if n > 1]
    assert reconcile(settings, WINDOW)["rows_in"] == 30


# -- the S3 endpoint gone mid-write -------------------------------------------------------------


class TcpProxy:
    """A loopback TCP proxy the test controls: `cut()` closes every live connection and refuses
    new ones (accepted, then closed at once), `resume()` lets them through again. `accepted`
    counts connections, `refused` those turned away."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.open = threading.Event()
        self.open.set()
        self.live: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.accepted = self.refused = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if not self.open.is_set():
                self.refused += 1
                client.close()
                continue
            self.accepted += 1
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.live |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def cut(self) -> None:
        self.open.clear()
        with self.lock:
            live, self.live = self.live, set()
        for s in live:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def resume(self) -> None:
        self.open.set()

    def close(self) -> None:
        self.cut()
        self.sock.close()


@pytest.fixture
def proxy():
    made: list[TcpProxy] = []
    yield lambda port: made.append(TcpProxy(port)) or made[-1]
    for p in made:
        p.close()


@pytest.mark.timeout(300)
def test_s3_endpoint_gone_mid_write_then_back(settings, fresh_mysql_db, s3_server, proxy, tmp_path):
    s3 = proxy(s3_server.port)
    settings = settings.replace(
        lake=f"s3://{s3_server.bucket()}/lake", s3_endpoint=f"http://127.0.0.1:{s3.port}"
    )
    insert(fresh_mysql_db, day_rows(range(1, 21)))
    run_etl(settings, WINDOW, now=NOW)
    direct = Lake(settings.lake, s3_server.endpoint)  # reads past the proxy
    before = snapshot(direct)
    insert(fresh_mysql_db, [row(i, DAY + (WINDOW.end - WINDOW.start) / 2) for i in range(21, 31)])

    marker = tmp_path / "at-commit"
    proc = paused_step(settings, marker, "--step", "extract")
    assert wait_for_file(marker, proc).startswith("posts_raw")
    s3.cut()  # the endpoint goes away with the data written and the manifest not yet
    _, err = proc.communicate("go\n", timeout=240)
    assert proc.returncode == 2, err
    assert "postflow etl: error:" in err and "posts_raw/ds=2026-11-20" in err
    assert s3.refused > 0  # it did try again (pyarrow's retry strategy) before giving up
    assert snapshot(direct) == before

    s3.resume()  # the endpoint is back: the retry completes
    out = subprocess.run(ETL, cwd=REPO, env=step_env(settings), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert ids_of(direct, "posts_raw") == list(range(1, 31))
    assert reconcile(settings, WINDOW)["rows_in"] == 30


# -- the SMTP server refusing, then accepting -----------------------------------------------------


class Refusing:
    """An aiosmtpd handler that answers 451 (try again later) to the first `data_refusals`
    DATA commands and to the first RCPT of each address in `greylist`, then accepts."""

    def __init__(self, data_refusals: int = 0, greylist: tuple[str, ...] = ()) -> None:
        self.data_refusals, self.greylist = data_refusals, set(greylist)
        self.messages: list[dict] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.greylist:
            self.greylist.discard(address)
            return "451 4.7.1 Greylisted, please try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.data_refusals:
            self.data_refusals -= 1
            return "451 4.3.0 Temporary failure, try again later"
        self.messages.append({"rcpt_tos": list(envelope.rcpt_tos), "data": envelope.content})
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp():
    """(handler, SmtpParams) of an aiosmtpd server on loopback whose behaviour the test sets."""
    from aiosmtpd.controller import Controller

    from ml.report.mail import SmtpParams
    from tests.conftest import free_port

    handler = Refusing()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, SmtpParams(port=port, timeout=10)
    finally:
        controller.stop()


@pytest.fixture
def archived_week(tmp_path: Path):
    """Settings and the week of an archived (empty) weekly report: local lake, sqlite MLflow."""
    from ml.report.weekly import build_report
    from ml.weeks import Week

    settings = Settings.load(
        {
            "lake": str(tmp_path / "lake"),
            "mlflow_uri": f"sqlite:///{tmp_path}/mlflow.db",
            "registered_model": "never-registered",
            "report_recipients": "ml-team@example.com, lead@example.com",
        }
    )
    week = Week(2026, 40)
    build_report(settings, week)
    return settings, week


def archive_files(settings: Settings, week) -> dict[str, bytes]:
    folder = Path(settings.lake) / "reports" / f"week={week.label}"
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name != "_sent.json"}


def test_smtp_451_then_250_archives_once_and_mails_once(archived_week, smtp):
    from ml.report.weekly import send_report

    settings, week = archived_week
    handler, params = smtp
    handler.data_refusals = 1
    archive = archive_files(settings, week)
    with pytest.raises(Exception, match="451"):
        send_report(settings, week, params)
    assert handler.messages == [] and archive_files(settings, week) == archive
    out = send_report(settings, week, params)  # the task's retry
    assert out["recipients"] == ["ml-team@example.com", "lead@example.com"]
    again = send_report(settings, week, params)  # retried once more (the worker died after)
    assert again["recipients"] == [] and again["already_sent"]
    (msg,) = handler.messages
    assert msg["rcpt_tos"] == ["ml-team@example.com", "lead@example.com"]
    assert archive_files(settings, week) == archive  # never rebuilt


def test_greylisted_recipient_gets_the_report_on_retry_and_nobody_twice(archived_week, smtp):
    """451 at RCPT for one of two recipients: smtplib sends to the other and reports the
    refusal without raising; it used to end there (task green, lead never mailed)."""
    from ml.report.weekly import SendIncomplete, send_report

    settings, week = archived_week
    handler, params = smtp
    handler.greylist = {"lead@example.com"}
    with pytest.raises(SendIncomplete, match="lead@example.com"):
        send_report(settings, week, params)
    send_report(settings, week, params)
    send_report(settings, week, params)
    got = Counter(a for m in handler.messages for a in m["rcpt_tos"])
    assert got == {"ml-team@example.com": 1, "lead@example.com": 1}
    assert len(handler.messages) == 2


def test_a_rebuilt_report_is_mailed_again(archived_week, smtp):
    from ml.report.weekly import build_report, send_report

    settings, week = archived_week
    handler, params = smtp
    send_report(settings, week, params)
    build_report(settings, week)  # a backfill of the week replaces the report
    send_report(settings, week, params)
    assert len(handler.messages) == 2


# -- the MLflow server down during train and promote -------------------------------------------

START, END = "2024-04-01", "2024-04-10"


@pytest.fixture
def models(tmp_path: Path, mlflow_server, proxy):
    """A lake with two days of posts_clean + features whose classes a model can learn, and the
    environment of `python -m ml train/promote` reaching the MLflow server through a proxy the
    test cuts. MLflow's client retries only once, so a cut fails in seconds, not minutes."""
    import uuid
    from datetime import datetime

    import numpy as np

    from ml.learn.bins import DEFAULT_EDGES
    from tools.synthetic import class_features, write_features, write_posts_clean

    n = 600
    X, y = class_features(n, sep=1.5, dtype=np.float16)
    ids = np.arange(1, n + 1) * 7 + 3
    lake = Lake(str(tmp_path / "lake"))
    for ds, sl in ((START, slice(0, n // 2)), (END, slice(n // 2, n))):
        k = len(ids[sl])
        posted = datetime.fromisoformat(ds)  # created in the window, labelled at horizon 0
        cols = {"id": ids[sl], "author_id": [1] * k, "caption": ["c"] * k, "image_uri": ["x"] * k}
        cols |= {"hearts": [3] * k, "created_at": [posted] * k, "updated_at": [posted] * k}
        cols["comment_count"] = np.asarray(DEFAULT_EDGES)[y[sl]] + 0
        write_posts_clean(lake, ds, cols)
        write_features(lake, ds, ids[sl], X[sl].astype(np.float32))
    server = proxy(mlflow_server.port)
    tag = uuid.uuid4().hex[:8]
    env = os.environ.copy() | {
        "PYTHONPATH": str(REPO),
        "POSTFLOW_CONFIG": "",
        "POSTFLOW_LAKE": lake.root,
        "POSTFLOW_LABEL_HORIZON_DAYS": "0",
        "POSTFLOW_MLFLOW_URI": f"http://127.0.0.1:{server.port}",
        "POSTFLOW_MLFLOW_EXPERIMENT": f"faults-{tag}",
        "POSTFLOW_REGISTERED_MODEL": f"faults-{tag}",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
        "MLFLOW_S3_ENDPOINT_URL": mlflow_server.s3.endpoint,
    }
    import mlflow

    direct = mlflow.MlflowClient(mlflow_server.uri, mlflow_server.uri)  # past the proxy
    return {"env": env, "proxy": server, "client": direct, "name": f"faults-{tag}"}


TRAIN = ["train", "--start", START, "--end", END, "--ds", END, "--max-epochs", "5"]


def versions(client, name: str) -> list:
    return client.search_model_versions(f"name='{name}'")


def aliases(client, name: str) -> dict[str, str]:
    from mlflow.exceptions import MlflowException

    try:
        return dict(client.get_registered_model(name).aliases)
    except MlflowException:
        return {}


def run_step(argv: list[str], env: dict[str, str]) -> dict:
    import json

    out = subprocess.run(
        [str(VENV_BIN / "python"), "-m", "ml", *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "at",
    ["mlflow.pyfunc:log_model", "ml.learn.registry:register_challenger"],
    ids=["while-logging", "before-registering"],
)
def test_mlflow_down_during_train_registers_nothing_and_the_retry_completes(models, tmp_path, at):
    env, cut, client, name = models["env"], models["proxy"], models["client"], models["name"]
    marker = tmp_path / "paused"
    proc = paused_run(TRAIN, env, marker, at)
    wait_for_file(marker, proc, timeout=300)
    cut.cut()
    _, err = proc.communicate("go\n", timeout=300)
    assert proc.returncode == 2, err[-3000:]  # one clear line, not a traceback
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: MLflow") and "127.0.0.1" in last  # it names the server
    assert versions(client, name) == [] and aliases(client, name) == {}  # nothing half-made

    cut.resume()  # the server is back: Airflow's retry of train_model
    trained = run_step(TRAIN, env)
    (mv,) = versions(client, name)
    assert int(mv.version) == trained["version"] and mv.run_id == trained["run_id"]
    assert aliases(client, name) == {"challenger": mv.version}
    assert client.get_run(mv.run_id).info.status == "FINISHED"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("after", [False, True], ids=["before-the-tags", "before-the-alias"])
def test_mlflow_down_during_promote_moves_no_alias_and_the_retry_completes(models, tmp_path, after):
    """Cut before the decision tags are written, or after them and before `champion` moves:
    the alias never moves without its tags; the retry writes both."""
    env, cut, client, name = models["env"], models["proxy"], models["client"], models["name"]
    version = run_step(TRAIN, env)["version"]
    promote = ["promote", "--version", str(version), "--start", START, "--end", END]
    marker = tmp_path / "paused"
    proc = paused_run(promote, env, marker, "ml.learn.promote:_record", after=after)
    wait_for_file(marker, proc, timeout=300)
    cut.cut()
    _, err = proc.communicate("go\n", timeout=300)
    assert proc.returncode != 0
    assert "champion" not in aliases(client, name)
    tags = client.get_model_version(name, str(version)).tags
    assert ("postflow.promotion" in tags) == after  # written before the cut, or not at all

    cut.resume()
    decision = run_step(promote, env)
    assert decision["promoted"]
    assert aliases(client, name)["champion"] == str(version)
    tags = client.get_model_version(name, str(version)).tags
    assert tags["postflow.promotion"] == "promoted"


# -- MySQL killed or unreachable mid-extract ------------------------------------------------------


def admin_conn(db):
    import MySQLdb

    from tests.conftest import MYSQL_ADMIN, MYSQL_ADMIN_PASSWORD, MYSQL_HOST, MYSQL_PORT

    return MySQLdb.connect(
        host=MYSQL_HOST,
        port=MYSQL_PORT,
        user=MYSQL_ADMIN,
        passwd=MYSQL_ADMIN_PASSWORD,
        database=db.name,
        autocommit=True,
    )


def after_first_chunk(monkeypatch, action) -> list[int]:
    """Run `action()` once the extract has read its first page (before it reads the next);
    returns the list of chunk sizes read."""
    import ml.ingest.etl

    real = ml.ingest.etl.extract_window
    sizes: list[int] = []

    def chunks(*args, **kwargs):
        for chunk in real(*args, **kwargs):
            sizes.append(chunk.num_rows)
            if len(sizes) == 1:
                action()
            yield chunk

    monkeypatch.setattr(ml.ingest.etl, "extract_window", chunks)
    return sizes


MANY = 400


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kill", ["CONNECTION", "QUERY"])
def test_mysql_connection_killed_mid_extract(settings, fresh_mysql_db, monkeypatch, kill):
    """After the first page, an admin session locks `posts`, so the next page's query waits
    (seen in the process list); it is killed there, the lock released: the extract's own
    retry reads the page again. Every post once, none twice."""
    insert(fresh_mysql_db, day_rows(range(1, MANY + 1)))
    settings = settings.replace(extract_chunk_rows=50, extract_plan="scan")
    admin = admin_conn(fresh_mysql_db)
    killed: list[int] = []

    def killer() -> None:
        cur = admin_conn(fresh_mysql_db).cursor()
        deadline = time.monotonic() + 60
        while not killed and time.monotonic() < deadline:
            cur.execute(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s AND "
                "STATE LIKE '%%metadata lock%%'",  # a query or prepared statement, waiting
                (fresh_mysql_db.reader_user,),
            )
            for (pid,) in cur.fetchall():
                cur.execute(f"KILL {kill} {int(pid)}")
                killed.append(pid)
            time.sleep(0.02)
        admin.cursor().execute("UNLOCK TABLES")

    def lock_and_kill() -> None:
        admin.cursor().execute("LOCK TABLES posts WRITE")
        threading.Thread(target=killer, daemon=True).start()

    sizes = after_first_chunk(monkeypatch, lock_and_kill)
    summary = run_etl(settings, WINDOW, now=NOW)
    assert killed, "no extract query was caught waiting"
    assert len(sizes) > 2 and summary["rows_in"] == MANY
    assert ids_of(Lake.from_settings(settings), "posts_raw") == list(range(1, MANY + 1))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("comes_back", [True, False], ids=["back-in-time", "gone"])
def test_mysql_unreachable_for_a_while(settings, fresh_mysql_db, monkeypatch, proxy, comes_back):
    """MariaDB behind a proxy that refuses every connection after the first page; it lets
    them through again after two refusals (within the extract's retries), or never."""
    from ml.ingest.source import SourceError
    from tests.conftest import MYSQL_PORT

    insert(fresh_mysql_db, day_rows(range(1, 101)))
    db = proxy(MYSQL_PORT)
    uri = fresh_mysql_db.reader.uri().replace(f":{MYSQL_PORT}/", f":{db.port}/")
    assert uri != fresh_mysql_db.reader.uri()
    settings = settings.replace(mysql_uri=uri, extract_chunk_rows=20, extract_plan="scan")
    run_etl(settings, WINDOW, now=NOW)  # a good day first
    lake = Lake.from_settings(settings)
    before = snapshot(lake)
    insert(fresh_mysql_db, day_rows(range(101, 201)))

    def reopen() -> None:
        deadline = time.monotonic() + 60
        while db.refused < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        db.resume()

    def outage() -> None:
        db.cut()
        if comes_back:
            threading.Thread(target=reopen, daemon=True).start()

    after_first_chunk(monkeypatch, outage)
    if comes_back:
        summary = run_etl(settings, WINDOW, now=NOW)
        assert summary["rows_in"] == 200 and db.refused >= 2
        assert ids_of(lake, "posts_raw") == list(range(1, 201))
    else:
        with pytest.raises(SourceError, match="Is the server running"):
            run_etl(settings, WINDOW, now=NOW)
        assert snapshot(lake) == before  # the previous day's partitions untouched
        db.resume()
        assert run_etl(settings, WINDOW, now=NOW)["rows_in"] == 200  # the retry completes
