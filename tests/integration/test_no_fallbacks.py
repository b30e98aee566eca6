"""In CI a missing server fails the tests that need it, naming the variable to set: no test
quietly runs on a stand-in (sqlite for PostgreSQL) or skips. Each case runs pytest on a real
test with the server pointed at a closed port."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import REPO, VENV_BIN, free_port

pytestmark = pytest.mark.integration


def _pytest(nodeid: str, **env: str) -> subprocess.CompletedProcess:
    environ = os.environ.copy() | {"CI": "true", **env}
    return subprocess.run(
        [str(VENV_BIN / "pytest"), "-p", "no:cacheprovider", "-q", "-x", nodeid],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.timeout(600)
def test_backfill_tests_fail_in_ci_without_postgresql():
    port = str(free_port())  # nothing listens there
    out = _pytest(
        "tests/integration/test_backfill_api.py::test_api_refuses_requests_without_valid_login",
        POSTFLOW_TEST_PG_PORT=port,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 1, text[-3000:]  # failed (an error in set-up), not skipped
    assert f"PostgreSQL unreachable at postgres@127.0.0.1:{port}" in text, text[-3000:]
    assert "set POSTFLOW_TEST_PG_HOST/PORT/USER/PASSWORD" in text
    assert "CI: no sqlite fallback" in text
    assert "1 error" in text and "skipped" not in text


@pytest.mark.timeout(300)
def test_mysql_tests_fail_in_ci_without_mariadb():
    out = _pytest(
        "tests/integration/test_etl_stages.py",
        POSTFLOW_TEST_MYSQL_PORT=str(free_port()),
    )
    text = out.stdout + out.stderr
    assert out.returncode == 1, text[-3000:]
    assert "MariaDB/MySQL is not reachable" in text and "POSTFLOW_TEST_MYSQL_HOST" in text
    assert "skipped" not in text


@pytest.mark.timeout(300)
def test_demo_data_tests_honour_the_test_mysql_variables():
    """tests/ml/demo/test_posts.py reads POSTFLOW_TEST_MYSQL_* (it had 127.0.0.1:3306 built in
    and skipped all its tests when nothing answered there)."""
    port = str(free_port())
    out = _pytest("tests/ml/demo/test_posts.py", POSTFLOW_TEST_MYSQL_PORT=port)
    text = out.stdout + out.stderr
    assert out.returncode == 1, text[-3000:]
    assert f"not reachable at 127.0.0.1:{port}" in text and "POSTFLOW_TEST_MYSQL_HOST" in text
    assert "skipped" not in text
