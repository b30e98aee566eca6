"""postflow settings: one typed object, read from `POSTFLOW_*` environment variables and an
optional TOML file, with defaults that run on a developer machine.

Precedence: explicit overrides > environment > file (`POSTFLOW_CONFIG`, else `./postflow.toml`
when present; an empty `POSTFLOW_CONFIG` reads no file) > defaults. Airflow tasks build a
`Settings` and override the fields that come from Airflow connections (`mysql_uri` from
`posts_mysql`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "POSTFLOW_"
DEFAULT_STATE_DIR = Path(".postflow")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message says which and how to fix it."""


@dataclass(frozen=True)
class Settings:
    # source
    mysql_uri: str = "mysql://root@127.0.0.1:3306/postflow"
    # lake: a local folder or s3://bucket/prefix
    lake: str = str(DEFAULT_STATE_DIR / "lake")
    s3_endpoint: str | None = None
    s3_region: str = "us-east-1"
    # the S3 address mail readers can open: the report's presigned link is signed for it
    # (None = s3_endpoint); compose: the S3 server's published port
    s3_public_endpoint: str | None = None
    # where relative image_uri values are resolved (a folder or s3://bucket/prefix)
    image_root: str = str(DEFAULT_STATE_DIR / "images")
    # extraction
    extract_chunk_rows: int = 250_000
    # auto (ml.ingest.extract.choose_plan) | scan (primary-key order) | ranges (index count + id
    # ranges)
    extract_plan: str = "auto"
    # sanitising
    caption_max_chars: int = 2200
    max_image_pixels: int = 40_000_000
    min_image_side: int = 8
    image_workers: int = 0  # 0 = one per CPU core
    # hostile input (ml.ingest.images): image_uri is user data. Extra places photos may come from
    # (comma-separated folders and s3://bucket), and the most bytes a photo file may have.
    image_allowed_roots: str = ""
    max_image_bytes: int = 50_000_000
    # a post may have no caption (~1% of real posts): kept with "" unless this is true
    require_caption: bool = False
    # batch-level validation: fail the run below this many rows (0 = an empty day is fine)
    min_rows_error: int = 0
    # batch-level warnings when more than this fraction of rows is quarantined
    max_quarantine_fraction_warn: float = 0.2
    max_quarantine_fraction_error: float = 0.9
    # validate as mapped tasks over id ranges of posts_raw (issue 22): shards of a day; 0 =
    # ceil(rows / validate_shard_rows), at most validate_max_shards
    validate_shards: int = 0
    validate_shard_rows: int = 1_000_000
    validate_max_shards: int = 16
    # tracking and registry (MLflow)
    mlflow_uri: str = "sqlite:///" + str(DEFAULT_STATE_DIR / "mlflow.db")
    mlflow_experiment: str = "post-engagement"
    mlflow_ui_url: str = ""  # link target for the Airflow extra link; "" = derived from mlflow_uri
    registered_model: str = "post-engagement"
    # promotion gate: challenger macro-F1 >= champion macro-F1 + margin, no class recall drop
    # larger than max_recall_drop (absolute), and an absolute floor for the first model
    promotion_margin: float = 0.0
    max_recall_drop: float = 0.15
    min_macro_f1: float = 0.0
    # the improvement over the champion must be credible: the paired-bootstrap interval of
    # (challenger - champion) macro-F1 at this confidence must lie above the margin
    promotion_confidence: float = 0.9
    bootstrap_samples: int = 1000
    # classes with fewer test posts than this are not held to the recall-collapse rule
    min_class_support: int = 20
    # engagement classes: comment-count bin edges (`python -m ml tune-bins` proposes them); a
    # model trained on other edges is never compared with one trained on these
    bin_edges: str = "0,1,3,10,30,100,300,600"
    # training data
    train_window_days: int = 28
    # the target: comment_count this many days after created_at (ml.learn.labels); a model on
    # another horizon is never compared with one on this (a re-baselining, see `rebaseline`)
    label_horizon_days: int = 7
    # a challenger on other bin edges, horizon or encoders than the champion's is refused unless
    # this is true: then it is judged as a first model, and the version says so
    rebaseline: bool = False
    # the label's assumption (updated_at moves whenever comment_count does), re-read from MySQL
    # each night (ml.ingest.source_check): posts sampled, and the share of them whose count moved
    # without updated_at above which the window's labels are held back
    source_check_sample: int = 500
    source_check_max_fraction: float = 0.01
    # embedding: imagenet (torchvision cache) | none (random init, tests/demo) | /path/to/weights
    image_weights: str = "imagenet"
    text_model: str = ""  # sentence-transformers dir; "" = the packaged all-MiniLM-L6-v2
    embed_shards: int = 2
    device: str = "auto"
    # image-model precision at embed (helper "cpu", issue 14): auto = fp16 on CUDA, fp32 on CPU;
    # bf16 is several times faster on a CPU with native bf16 but moves features slightly
    embed_precision: str = "auto"
    # step runner: local (subprocess) | kubernetes (KubernetesPodOperator)
    step_runner: str = "local"
    k8s_namespace: str = "postflow"
    k8s_image: str = "postflow-ml:0.1.0"
    k8s_service_account: str = "postflow-ml"
    k8s_secret: str = "postflow-ml"  # Secret with MySQL/S3/MLflow credentials, as env
    k8s_gpus: int = 1
    k8s_node_selector: str = "nvidia.com/gpu.present=true"  # k=v[,k=v]
    k8s_tolerations: str = "nvidia.com/gpu=present:NoSchedule"  # key[=value]:effect[,...]
    # GPU pods: the Airflow pool that caps how many run at once, and their execution_timeout
    k8s_gpu_pool: str = "postflow_gpu"
    k8s_gpu_timeout_s: int = 6 * 3600
    # execution_timeout of an ML step run as a local subprocess (compose's ML worker) and of an
    # ETL task: a hung step frees its worker slot and fails loudly (0: none)
    local_step_timeout_s: int = 6 * 3600
    etl_timeout_s: int = 2 * 3600
    # Celery queue of the ML steps (compose: "ml", served by the worker with torch)
    ml_queue: str = "default"
    # weekly report
    report_recipients: str = "ml-team@example.com"  # comma-separated
    report_sender: str = "postflow@example.com"
    report_weeks: int = 12
    report_link_expiry_s: int = 7 * 24 * 3600
    drift_psi_threshold: float = 0.2
    # drift alarms only with this many rows on each side, and above the PSI that resampling the
    # reference against itself at the same sizes reaches (its noise floor)
    drift_min_sample: int = 200
    # failure notifications (comma-separated; "" = report_recipients)
    alert_recipients: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(
        cls,
        overrides: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        path = environ.get(ENV_PREFIX + "CONFIG")
        if path is None and Path("postflow.toml").is_file():
            path = "postflow.toml"
        if path:
            values.update(_read_file(Path(path)))
        for f in fields(cls):
            key = ENV_PREFIX + f.name.upper()
            if key in environ and f.name != "extra":
                values[f.name] = environ[key]
        values.update(overrides or {})
        return cls._coerce(values)

    @classmethod
    def _coerce(cls, values: Mapping[str, Any]) -> Settings:
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown setting(s) {unknown}; known: {sorted(known)}")
        out: dict[str, Any] = {}
        for name, raw in values.items():
            f = known[name]
            out[name] = _convert(name, f.type, raw)
        return cls(**out)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def edges(self) -> tuple[int, ...]:
        """`bin_edges` as integers (validated: see `parse_edges`)."""
        return parse_edges(self.bin_edges, ENV_PREFIX + "BIN_EDGES")

    @property
    def workers(self) -> int:
        return self.image_workers or available_cpus()

    def redacted(self) -> dict[str, Any]:
        """Settings as a dict safe to log: passwords in URIs are masked."""
        d = dataclasses.asdict(self)
        d["mysql_uri"] = redact_uri(self.mysql_uri)
        d["mlflow_uri"] = redact_uri(self.mlflow_uri)
        return d


# Where the container's CPU quota is read (a test points it elsewhere).
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _cgroup_cpu_quota(root: Path) -> float | None:
    """CPUs allowed by the cgroup's quota (v2 `cpu.max`, else v1 `cpu.cfs_quota_us` over
    `cpu.cfs_period_us`); None when there is none or it cannot be read."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for v1 in (root / "cpu", root / "cpu,cpuacct"):
        try:
            quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
            period_us = int((v1 / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    return None


def available_cpus() -> int:
    """CPUs this process may really use: its affinity mask, capped by the container's CPU quota.
    Not os.cpu_count(): in a pod limited to 2 CPUs on a 64-core node that says 64, and one
    extract would open 64 connections to the app's MySQL."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota(CGROUP_ROOT)
    if quota is not None:
        cpus = min(cpus, int(quota))
    return max(1, cpus)


def parse_edges(text: str, what: str = "bin edges") -> tuple[int, ...]:
    """Comment-count bin edges "0,1,3,10": at least two integers, strictly increasing, from 0
    or more (class k holds [edges[k], edges[k+1]), the last is open-ended)."""
    try:
        edges = tuple(int(x) for x in str(text).replace(" ", "").split(",") if x != "")
    except ValueError:
        raise ConfigError(f"{what}={text!r}: integers separated by commas, e.g. 0,1,3,10") from None
    if (
        len(edges) < 2
        or edges[0] < 0
        or any(b <= a for a, b in zip(edges, edges[1:], strict=False))
    ):
        raise ConfigError(f"{what}={text!r}: need two or more increasing edges from 0 or more")
    return edges


def addresses(text: str | None) -> list[str]:
    """Email addresses of a setting such as POSTFLOW_REPORT_RECIPIENTS (comma or semicolon
    separated)."""
    return [a for a in (s.strip() for s in re.split(r"[,;]", text or "")) if a]


def redact_uri(uri: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} (POSTFLOW_CONFIG) does not exist")
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    return data.get("postflow", data)


def _convert(name: str, typ: Any, raw: Any) -> Any:
    typ = str(typ)
    if raw is None or not isinstance(raw, str):
        return raw
    try:
        if typ.startswith("int"):
            return int(raw)
        if typ.startswith("float"):
            return float(raw)
        if typ.startswith("bool"):
            return raw.strip().lower() in {"1", "true", "yes", "on"}
    except ValueError as exc:
        raise ConfigError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {typ}") from exc
    if typ == "str | None" and raw == "":
        return None
    return raw


def parse_shard(text: str) -> tuple[int, int]:
    """`--shard i/N` of the embed and validate steps: shard i (from 0) of N."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--shard must look like i/N, got {text!r}") from exc
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"--shard {text}: need 0 <= i < N")
    return i, n
