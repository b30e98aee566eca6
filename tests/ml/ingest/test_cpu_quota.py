"""Worker counts from the CPUs a container may use (cgroup quota, affinity), not the node's: the
ETL extract's partitions (one MySQL connection each) and the photo checks
(ml.config.available_cpus)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ml import config
from ml.config import Settings, available_cpus


@pytest.fixture
def cgroup(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setattr(config, "CGROUP_ROOT", tmp_path)
    return tmp_path


def affinity() -> int:
    return len(os.sched_getaffinity(0))


def test_cgroup_v2_quota_caps_the_count(cgroup):
    (cgroup / "cpu.max").write_text("100000 100000\n")  # 1 CPU
    assert available_cpus() == 1
    (cgroup / "cpu.max").write_text("250000 100000\n")  # 2.5 CPUs: 2 whole ones
    assert available_cpus() == min(2, affinity())
    (cgroup / "cpu.max").write_text("50000 100000\n")  # half a CPU: still one worker
    assert available_cpus() == 1


def test_no_quota_means_the_affinity_mask(cgroup):
    (cgroup / "cpu.max").write_text("max 100000\n")
    assert available_cpus() == affinity()
    (cgroup / "cpu.max").unlink()
    assert available_cpus() == affinity()


def test_cgroup_v1_quota(cgroup):
    v1 = cgroup / "cpu,cpuacct"
    v1.mkdir()
    (v1 / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cpus() == 1
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")  # unlimited
    assert available_cpus() == affinity()


def test_settings_workers_follow_the_quota_unless_set(cgroup):
    (cgroup / "cpu.max").write_text("100000 100000\n")
    assert Settings().workers == 1, "the ETL's extract partitions and image workers"
    assert Settings(image_workers=3).workers == 3


def test_this_machine_is_read_as_is():
    """On the real /sys/fs/cgroup: a count between 1 and the affinity mask."""
    assert 1 <= available_cpus() <= affinity()
