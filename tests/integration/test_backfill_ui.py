"""The on-call engineer's path through the Airflow UI, clicked in a real browser (Playwright
driving Debian's Chromium, no browser download) on `make up`'s stack (`start_stack`):

1. log in, open `posts_etl`, Trigger → Backfill, pick a date range in the dialog's own date
   pickers, Run Backfill; watch the runs turn green in the grid; the lake holds every post of
   each day (counted in MySQL), once;
2. a run whose extract fails (the reader lost its SELECT grant): open the failed task in the
   grid, read its log in the UI (it names the cause), fix the cause, Clear the task from the
   UI; the run then succeeds.

Screenshots of each step are test artefacts under `.postflow/test-artifacts/<test>/`; when a
step fails, a screenshot of the page as it was is saved there too and the paths are printed.
This stack retries no task (a cluster policy, `airflow_local_settings.py`): a failure is final
at once, as after a production run's last retry.
"""

from __future__ import annotations

import re
import shutil
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect

from ml.lake.partitions import Lake
from tests.conftest import REPO, load_dag
from tests.integration.test_backfill_api import (
    D1,
    D3,
    D4,
    TASKS,
    _check_partitions,
    _day,
    _runs,
    _source_counts,
    metadata_db,  # noqa: F401  (module fixture: a PostgreSQL metadata DB of this module's own)
    source,  # noqa: F401  (module fixture: demo posts on D1..D4 in a MySQL database of its own)
    start_stack,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / ".postflow" / "test-artifacts"
# This stack's cluster policy: no retries, so a failed task is failed at once.
NO_RETRIES = "def task_policy(task):\n    task.retries = 0\n"
OPEN_POPOVER = "[data-scope=popover][data-part=content][data-state=open]"
TOOLTIP = "[data-scope=tooltip][data-part=content][data-state=open]"
CLEAR_BUTTON = re.compile(r"^(Clear Task Instance|Press shift\+c to clear)$")


@pytest.fixture(scope="module")
def ui_stack(source, metadata_db, tmp_path_factory):  # noqa: F811
    policy = tmp_path_factory.mktemp("policy")
    (policy / "airflow_local_settings.py").write_text(NO_RETRIES)
    import os

    pythonpath = os.pathsep.join(filter(None, [str(policy), os.environ.get("PYTHONPATH")]))
    with start_stack(source, metadata_db, {"PYTHONPATH": pythonpath}) as (stack, *_):
        yield stack


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.is_file(), "Debian's chromium is needed: ./scripts/system-deps.sh chromium"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


class Shots:
    """Numbered screenshots of one test, kept as artefacts."""

    def __init__(self, page, folder: Path) -> None:
        self.page, self.folder, self.paths = page, folder, []
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)

    def take(self, name: str) -> Path:
        path = self.folder / f"{len(self.paths) + 1:02d}-{name}.png"
        self.page.screenshot(path=str(path))
        self.paths.append(path)
        return path


@pytest.fixture
def page(browser, ui_stack, request) -> Iterator:
    """A logged-in page (the login form, as a person would) and its screenshots; the last
    page is saved too (after a failure: the page as it was), and every path is printed
    (pytest shows it with a failure)."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(30_000)
    shots = Shots(pg, ARTIFACTS / request.node.name)
    pg.shots = shots
    try:
        pg.goto(ui_stack.base + "/dags/posts_etl")
        pg.wait_for_url("**/auth/login**")
        pg.fill("input[name=username]", "admin")
        pg.fill("input[name=password]", ui_stack.passwords["admin"])
        shots.take("login")
        pg.click("button[type=submit]")
        pg.wait_for_url("**/dags/posts_etl")
        pg.get_by_test_id("reconcile_posts").wait_for(timeout=120_000)
        yield pg
    finally:
        try:  # after a failure: the page as it was when the test stopped
            shots.take("last-page")
        except Exception as exc:  # the browser itself died: say so, keep the real error
            print(f"no screenshot of the last page: {exc}")
        print("screenshots:", *map(str, shots.paths), sep="\n  ")
        context.close()


def _pick_datetime(page, dialog, index: int, day: date) -> None:
    """The dialog's `index`-th date-time picker (0 From, 1 To) set to `day` 00:00 UTC."""
    dialog.get_by_test_id("datetime-input").nth(index).click()
    popover = page.locator(OPEN_POPOVER)
    popover.get_by_placeholder("YYYY/MM/DD").fill(day.strftime("%Y/%m/%d"))
    popover.get_by_placeholder("HH:mm").fill("00:00")
    page.keyboard.press("Escape")
    popover.wait_for(state="hidden")


def _wait_grid(page, ui_stack, days: list[date], state: str, timeout: float = 420) -> dict:
    """Until the grid shows the runs of `days` with every task in `state`; returns the runs
    (REST, for their ids: a backfill run's id is named after the end of its interval)."""
    deadline = time.monotonic() + timeout
    while True:
        runs = _runs(ui_stack)
        found = {str(d): runs.get(str(d)) for d in days}
        if all(found.values()):
            states = {d: _cell_states(page, r["dag_run_id"]) for d, r in found.items()}
            if all(s == dict.fromkeys(TASKS, state) for s in states.values()):
                return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"grid never showed {state} for {days}: {locals().get('states')}")
        time.sleep(5)
        _show_grid(page)


def _show_grid(page) -> None:
    """The DAG page reloaded, the details panel folded away: the grid at full width (in a
    narrow grid the oldest runs' cells are cut off, and cannot be hovered)."""
    page.reload()
    page.get_by_test_id("reconcile_posts").wait_for(timeout=120_000)  # the grid's task name
    fold = page.get_by_role("button", name="Collapse Details Panel")
    if fold.count():
        fold.first.click()


def _cell_states(page, run_id: str) -> dict[str, str | None]:
    """task -> the state the grid cell of (`run_id`, task) shows in its tooltip, as a person
    hovering it reads it ("State: Success"); None: no such cell."""
    out: dict[str, str | None] = {}
    for task in TASKS:
        cell = page.get_by_test_id(f"grid-{run_id}-{task}")
        if not cell.count():
            out[task] = None
            continue
        tip = page.locator(TOOLTIP).filter(has_text=f"Run ID: {run_id}").filter(has_text=task)
        try:
            cell.hover(timeout=10_000)
            match = re.search(r"State: (\w+)", tip.inner_text(timeout=10_000))
            out[task] = match.group(1).lower() if match else None
            page.mouse.move(0, 0)  # the tooltip closes
            tip.wait_for(state="hidden", timeout=10_000)
        except PlaywrightTimeout:  # the grid re-rendered under the mouse: read it next time
            out[task] = None
    return out


@pytest.mark.timeout(900)
def test_backfill_started_from_the_ui_dialog_fills_the_lake(page, ui_stack, source):  # noqa: F811
    db, settings = source
    days = [D1, date.fromordinal(D1.toordinal() + 1), D3]
    expected = _source_counts(db, days)
    assert all(expected.values()), expected

    page.get_by_test_id("trigger-dag-button").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Backfill", exact=True).click()
    _pick_datetime(page, dialog, 0, D1)
    _pick_datetime(page, dialog, 1, D3)
    dialog.get_by_text("3 runs will be triggered.").wait_for()
    dialog.locator("input[name=max_active_runs]").fill("3")
    page.shots.take("backfill-dialog-filled")
    dialog.get_by_role("button", name="Run Backfill").click()
    page.get_by_text("Backfill generated").wait_for()
    page.shots.take("backfill-generated")

    _show_grid(page)
    runs = _wait_grid(page, ui_stack, days, "success")
    page.shots.take("grid-three-green-runs")
    assert {r["run_type"] for r in runs.values()} == {"backfill"}
    status, backfills = ui_stack.call("GET", "/api/v2/backfills?dag_id=posts_etl")
    assert status == 200 and backfills["total_entries"] == 1, backfills
    bf = backfills["backfills"][0]
    assert (bf["from_date"][:10], bf["to_date"][:10]) == (str(D1), str(D3)), bf
    _check_partitions(Lake.from_settings(settings), days, expected)


@contextmanager
def _select_revoked(db) -> Iterator[None]:
    """The reader account without its SELECT grant on posts, its only one (as a DBA's mistake
    would leave it), until the block ends; then granted again."""
    grant = f"SELECT ON `{db.name}`.`posts`"
    users = ", ".join(f"'{db.reader_user}'@'{h}'" for h in db.READER_HOSTS)
    db.execute(f"REVOKE {grant} FROM {users}")
    try:
        yield
    finally:
        db.execute(f"GRANT {grant} TO {users}")


@pytest.mark.timeout(900)
def test_on_call_reads_the_failed_tasks_log_and_clears_it_in_the_ui(page, ui_stack, source):  # noqa: F811
    db, settings = source
    lake = Lake.from_settings(settings)
    # posts_etl is live, as in production (the backfill test's dialog unpaused it too)
    status, dag = ui_stack.call("PATCH", "/api/v2/dags/posts_etl", {"is_paused": False})
    assert status == 200 and dag["is_paused"] is False, dag
    with _select_revoked(db):
        # a manual run with logical date D+1 reads the complete day D (as the nightly run)
        after_d4 = date.fromordinal(D4.toordinal() + 1)
        status, run = ui_stack.call(
            "POST", "/api/v2/dags/posts_etl/dagRuns", {"logical_date": _day(after_d4)}
        )
        assert status == 200, run
        run_id = run["dag_run_id"]
        _show_grid(page)
        _wait_cell(page, ui_stack, run_id, "extract_posts", "failed")
        page.shots.take("grid-extract-failed")
        assert lake.read_manifest("posts_raw", D4) is None

        # the failed cell → the task instance → its log, as the failure mail's link leads there
        page.get_by_test_id(f"grid-{run_id}-extract_posts").click()
        page.get_by_text("Logs", exact=True).first.click()  # the task instance's first tab
        # the reader has no grant left on the database: MySQL refuses it at connect (1044)
        cause = f"Access denied for user '{db.reader_user}'@'127.0.0.1' to database"
        page.get_by_text(cause).first.wait_for()
        page.shots.take("failed-task-log")
        text = page.inner_text("body")
        assert db.reader_user in text and db.reader.password not in text
    # the cause is gone (SELECT granted again): clear the task from the UI
    # the task instance's Clear button (labelled by its tooltip while hotkeys are on)
    page.get_by_role("button", name=CLEAR_BUTTON).first.click()
    confirm = page.get_by_role("dialog")
    confirm.get_by_text("Clear Task Instance").first.wait_for()
    # the dialog lists what it will clear (its dry run): the task and, downstream, the tasks
    # that never ran (the mapped validate_posts, never expanded, is one); Confirm is live once
    # that list is there
    downstream = (
        load_dag("posts_etl").get_task("extract_posts").get_flat_relative_ids(upstream=False)
    )
    confirm.get_by_text(f"Affected Tasks: {1 + len(downstream)}").wait_for()
    button = confirm.get_by_role("button", name="Confirm")
    expect(button).to_be_enabled()
    page.wait_for_timeout(1000)  # the dialog's fade-in
    page.shots.take("clear-dialog")
    button.click()
    confirm.wait_for(state="hidden")
    page.shots.take("cleared")
    page.goto(ui_stack.base + "/dags/posts_etl")
    _show_grid(page)
    runs = _wait_grid(page, ui_stack, [after_d4], "success")
    page.shots.take("grid-cleared-run-green")
    assert runs[str(after_d4)]["dag_run_id"] == run_id
    run_q = urllib.parse.quote(run_id, safe="")
    status, tis = ui_stack.call("GET", f"/api/v2/dags/posts_etl/dagRuns/{run_q}/taskInstances")
    tries = {ti["task_id"]: ti["try_number"] for ti in tis["task_instances"]}
    assert tries["extract_posts"] == 2, tries  # the failed try, then the cleared one
    _check_partitions(lake, [D4], _source_counts(db, [D4]))


def _wait_cell(page, ui_stack, run_id: str, task: str, state: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while _cell_states(page, run_id).get(task) != state:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{task} of {run_id} never {state}: {_cell_states(page, run_id)}")
        time.sleep(5)
        _show_grid(page)
