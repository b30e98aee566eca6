"""One day of N posts through the posts_etl stages, each its own `python -m ml etl --step`
process as in Airflow: wall time, rows/s and peak RSS of each stage.

The day's posts come from MariaDB's sequence engine; their photos are 8 distinct 16x16 JPEGs
referenced by every post (the image check still opens and checks each row's photo). The same
stages run on a day of N/4 posts in the same run: with the chunk size fixed, each stage's peak
memory must stay about the same at N/4 and N posts (bounded by the chunk, not by the day). The
RESULT line gives rows/s of the whole day and the peak-RSS ratio N vs N/4 (goal: about 1x).

`python -m bench.bench_load --rows 1000000` is the nightly load of issue 13 §3.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from ml.ingest.source import MySQLTarget, create_schema

DAY = "2026-11-20"
STAGES = ("extract", "validate", "reconcile")
PHOTOS = 8


def populate(
    admin: MySQLTarget,
    rows: int,
    image_uri: str = f"CONCAT('p', seq % {PHOTOS}, '.jpg')",
    hearts: str = "seq % 997",
) -> None:
    """`rows` posts updated on DAY from MariaDB's sequence engine; `image_uri` and `hearts` are
    SQL expressions of `seq` (by default each post points at one of PHOTOS photo files)."""
    create_schema(admin)
    conn = admin.connect()
    cur = conn.cursor()
    cur.execute(
        "INSERT INTO posts (id, author_id, caption, image_uri, hearts, comment_count, "
        "created_at, updated_at) "
        "SELECT seq, seq % 50000, "
        "CONCAT('caption number ', seq, ' golden hour at the beach #sun'), "
        f"{image_uri}, {hearts}, seq % 613, "
        f"TIMESTAMP('{DAY}') + INTERVAL (seq % 86400) SECOND, "
        f"TIMESTAMP('{DAY}') + INTERVAL (seq % 86400) SECOND FROM seq_1_to_{int(rows)}"
    )
    conn.commit()
    conn.close()


def photos(root: Path) -> None:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for i in range(PHOTOS):
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (30 * i, 90, 200 - 20 * i)).save(buf, "JPEG", quality=90)
        (root / f"p{i}.jpg").write_bytes(buf.getvalue())


def run_stage(stage: str, env: dict[str, str]) -> tuple[float, int]:
    """(wall seconds, peak RSS in MiB) of one `python -m ml etl --step` process: the largest
    of the process and the workers it waited for (wait4's rusage; output to files, not pipes,
    so that wait4 reaps it)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "ml", "etl", "--start", DAY, "--step", stage],
            env=env,
            stdout=out,
            stderr=err,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{stage} failed: {err.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss // 1024


def day(rows: int, chunk_rows: int, host: str, user: str, workers: int) -> dict[str, tuple]:
    """Stage -> (seconds, peak MiB) for one day of `rows` posts."""
    admin = MySQLTarget(host, 3306, user, "", f"pf_bench_{uuid.uuid4().hex[:8]}")
    tmp = Path(tempfile.mkdtemp(prefix="pf-bench-load-"))
    try:
        t0 = time.perf_counter()
        populate(admin, rows)
        photos(tmp / "images")
        print(f"  {rows:,} posts in MariaDB in {time.perf_counter() - t0:.1f}s", flush=True)
        env = os.environ | {
            "POSTFLOW_CONFIG": "",
            "POSTFLOW_MYSQL_URI": admin.uri(),
            "POSTFLOW_LAKE": str(tmp / "lake"),
            "POSTFLOW_IMAGE_ROOT": str(tmp / "images"),
            "POSTFLOW_EXTRACT_CHUNK_ROWS": str(chunk_rows),
            "POSTFLOW_IMAGE_WORKERS": str(workers),
            "POSTFLOW_LOG_LEVEL": "WARNING",
        }
        out = {}
        for stage in STAGES:
            out[stage] = run_stage(stage, env)
            s, mib = out[stage]
            print(
                f"  {stage:<9} {s:7.1f}s {rows / s:10,.0f} rows/s  peak RSS {mib:5d} MiB",
                flush=True,
            )
        return out
    finally:
        conn = MySQLTarget(host, 3306, user, "", "mysql").connect()
        conn.cursor().execute(f"DROP DATABASE IF EXISTS `{admin.database}`")
        conn.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="posts in the day")
    parser.add_argument(
        "--chunk-rows",
        type=int,
        default=None,
        help="POSTFLOW_EXTRACT_CHUNK_ROWS (default 250000, at most rows/4 so that both days "
        "span several chunks)",
    )
    parser.add_argument("--workers", type=int, default=0, help="POSTFLOW_IMAGE_WORKERS")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--user", default="root")
    args = parser.parse_args(argv)
    small = max(1, args.rows // 4)
    chunk = args.chunk_rows or max(1, min(250_000, small))
    print(
        f"posts_etl stages, chunk {chunk:,} rows, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    results = {}
    for rows in (small, args.rows):
        print(f"day of {rows:,} posts:")
        results[rows] = day(rows, chunk, args.host, args.user, args.workers)
    big, little = results[args.rows], results[small]
    total = sum(s for s, _ in big.values())
    peak = max(m for _, m in big.values())
    peak_small = max(m for _, m in little.values())
    per_stage = " ".join(f"{k}_peak_mib={m}" for k, (_, m) in big.items())
    print(
        f"RESULT load_rows={args.rows} rows_per_s={args.rows / total:.0f} wall_s={total:.1f} "
        f"peak_rss_mib={peak} peak_rss_mib_at_quarter={peak_small} "
        f"memory_ratio={peak / max(peak_small, 1):.2f}x goal~1x {per_stage}"
    )
    return {"rows_per_s": args.rows / total, "peak_mib": peak, "peak_mib_quarter": peak_small}


if __name__ == "__main__":
    main()
