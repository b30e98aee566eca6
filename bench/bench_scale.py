"""The nightly's cost curve (issue 22): one day of N posts through `posts_etl`'s steps with
`validate` unsharded (one worker) and as 2 shards at once (two workers) plus their merge, each
step its own `python -m ml etl` process: wall time and peak RSS per step, the speed-up of 2
shards over 1 in the same run, and proof that nothing is lost and posts_clean is the same.

Posts come from MariaDB's sequence engine. Their photos: most point at 8 small 16x16 JPEGs, one
in `--real-every` at one of 8 real-size 1080x1080 q90 photos (bench_images' generator), so the
photo check's real cost counts without a million files on disk. Cores are shared: a 1-shard run
gets POSTFLOW_IMAGE_WORKERS=2, each of 2 shards 1, so both use the machine's two cores.
The speed-up is (unsharded validate) / (2 shards + merge), same run, same machine.

    python -m bench.bench_scale --rows 250000 1000000 [4000000] [--real-every 100]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

from bench import bench_load
from bench.bench_images import make_images
from ml.ingest.extract import window_stats
from ml.ingest.source import MySQLTarget

DAY = bench_load.DAY
REAL = 8


def populate(admin: MySQLTarget, rows: int, real_every: int) -> None:
    """bench_load's day, with one post in `real_every` on a real-size photo and a few bad rows
    so that quarantine is not empty: negative hearts, a missing photo."""
    bench_load.populate(
        admin,
        rows,
        image_uri=f"IF(seq % {real_every} = 0, CONCAT('real/', LPAD(seq % {REAL}, 5, '0'), "
        f"'.jpg'), CONCAT('p', seq % {bench_load.PHOTOS}, '.jpg'))",
        hearts="IF(seq % 1009 = 0, -1, seq % 997)",
    )
    conn = admin.connect()
    # updated_at kept: the table moves it on every UPDATE (ON UPDATE CURRENT_TIMESTAMP, as the
    # app's does), which took these posts out of the day (1,997 of 4M "lost" in the first run)
    conn.cursor().execute(
        "UPDATE posts SET image_uri = 'gone.jpg', updated_at = updated_at WHERE id % 2003 = 0"
    )
    conn.commit()
    conn.close()


def photos(root: Path) -> None:
    """bench_load's small photos, and REAL real-size ones under `real/`."""
    bench_load.photos(root)
    (root / "real").mkdir()
    make_images(root / "real", REAL)


def start(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, float, object]:
    err = tempfile.TemporaryFile()
    cmd = [sys.executable, "-m", "ml", "etl", "--start", DAY, *args]
    return (
        subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err),
        time.perf_counter(),
        err,
    )


def wait(procs: list[tuple]) -> tuple[float, int, float]:
    """(wall seconds until the last ends, largest peak RSS in MiB, CPU seconds of them all and
    their photo-check workers) of processes run at once."""
    t_start = min(t for _, t, _ in procs)
    peak, cpu = 0, 0.0
    for proc, _, err in procs:
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{proc.args[5:]} failed: {err.read().decode()[-2000:]}")
        peak = max(peak, usage.ru_maxrss // 1024)
        cpu += usage.ru_utime + usage.ru_stime
    return time.perf_counter() - t_start, peak, cpu


def step(env: dict[str, str], *runs: list[str]) -> tuple[float, int, float]:
    return wait([start(r, env) for r in runs])


def digest(lake_root: Path) -> dict:
    """`digest_here` in a child process: the bench's own memory stays small, so the peak RSS of
    the steps it starts later is theirs (a forked child starts at its parent's high-water mark)."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_scale", "--digest", str(lake_root)],
        capture_output=True,
        text=True,
        check=True,
    )
    return {k: tuple(v) for k, v in json.loads(out.stdout).items()}


def digest_here(lake_root: Path) -> dict:
    """Rows and a hash of posts_clean (every column, by id) and of quarantine's (id, reason)."""
    import pyarrow.compute as pc

    from ml.lake.partitions import Lake

    lake = Lake(str(lake_root))
    out = {}
    for dataset, cols in (("posts_clean", None), ("quarantine", ["id", "reason"])):
        t = lake.read_partition(dataset, DAY, columns=cols)
        t = t.take(pc.sort_indices(t, [("id", "ascending")]))
        h = hashlib.sha256()
        for batch in t.to_batches(max_chunksize=200_000):
            for col in batch.columns:
                h.update(str(col.to_pylist()).encode())
        out[dataset] = (t.num_rows, h.hexdigest()[:16])
    return out


def day(rows: int, args: argparse.Namespace) -> dict:
    admin = MySQLTarget(args.host, 3306, args.user, "", f"pf_bench_{uuid.uuid4().hex[:8]}")
    tmp = Path(tempfile.mkdtemp(prefix="pf-bench-scale-"))
    try:
        t0 = time.perf_counter()
        populate(admin, rows, args.real_every)
        # nothing lost is counted against MySQL's count of the day, not against `rows`
        start = datetime.fromisoformat(DAY)
        in_day = window_stats(admin, start, start + timedelta(days=1)).rows
        if in_day != rows:  # the bench's own setup, not the pipeline: stop before timing it
            raise RuntimeError(f"MySQL's day holds {in_day:,} of the {rows:,} posts written")
        photos(tmp / "images")
        print(f"  {rows:,} posts in MariaDB in {time.perf_counter() - t0:.1f}s", flush=True)
        env = os.environ | {
            "POSTFLOW_CONFIG": "",
            "POSTFLOW_MYSQL_URI": admin.uri(),
            "POSTFLOW_LAKE": str(tmp / "lake"),
            "POSTFLOW_IMAGE_ROOT": str(tmp / "images"),
            "POSTFLOW_EXTRACT_CHUNK_ROWS": str(args.chunk_rows),
            "POSTFLOW_LOG_LEVEL": "WARNING",
        }
        two, one = env | {"POSTFLOW_IMAGE_WORKERS": "1"}, env | {"POSTFLOW_IMAGE_WORKERS": "2"}
        fig: dict = {"extract": step(env, ["--step", "extract"])}
        fig["validate_1"] = step(one, ["--step", "validate"])  # unsharded: one worker
        fig["reconcile_1"] = step(env, ["--step", "reconcile"])
        fig["digest_1"] = digest(tmp / "lake")
        shard = ["--step", "validate", "--shard"]
        fig["validate_2"] = step(two, [*shard, "0/2"], [*shard, "1/2"])
        fig["merge_2"] = step(env, ["--step", "merge", "--shards", "2"])
        fig["reconcile_2"] = step(env, ["--step", "reconcile"])
        fig["digest_2"] = digest(tmp / "lake")
        for k, v in fig.items():
            if k.startswith("digest"):
                print(f"  {k:<12} {v}", flush=True)
            else:
                print(
                    f"  {k:<12} {v[0]:8.1f}s {rows / v[0]:10,.0f} rows/s  peak {v[1]:5d} MiB  "
                    f"CPU {v[2]:8.1f}s"
                )
        one_s = fig["validate_1"][0]
        two_s = fig["validate_2"][0] + fig["merge_2"][0]
        fig["speedup"] = one_s / two_s
        fig["same_clean"] = fig["digest_1"] == fig["digest_2"]
        c, q = fig["digest_2"]["posts_clean"][0], fig["digest_2"]["quarantine"][0]
        fig["nothing_lost"] = c + q == in_day
        print(
            f"  validate unsharded {one_s:.1f}s, 2 shards + merge {two_s:.1f}s: "
            f"speed-up {fig['speedup']:.2f}x; same posts_clean {fig['same_clean']}; "
            f"clean {c:,} + quarantined {q:,} = {c + q:,} of {in_day:,} in MySQL's day "
            f"({rows:,} written)",
            flush=True,
        )
        return fig
    finally:
        conn = MySQLTarget(args.host, 3306, args.user, "", "mysql").connect()
        conn.cursor().execute(f"DROP DATABASE IF EXISTS `{admin.database}`")
        conn.close()
        shutil.rmtree(tmp, ignore_errors=True)


def peak(fig: dict) -> int:
    return max(v[1] for k, v in fig.items() if isinstance(v, tuple) and not k.startswith("d"))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[250_000])
    parser.add_argument("--real-every", type=int, default=100, help="1 post in K: a real photo")
    parser.add_argument("--chunk-rows", type=int, default=250_000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--user", default="root")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--digest", type=Path, help=argparse.SUPPRESS)  # digest's child
    args = parser.parse_args(argv)
    if args.digest:
        print(json.dumps(digest_here(args.digest)))
        return {}
    print(
        f"posts_etl day, validate 1 vs 2 shards, chunk {args.chunk_rows:,}, 1 post in "
        f"{args.real_every} with a 1080 px photo, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    results = {}
    for rows in args.rows:
        print(f"day of {rows:,} posts:", flush=True)
        results[rows] = day(rows, args)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1, default=str))
    for rows, f in results.items():
        print(
            f"RESULT scale_rows={rows} validate_1_s={f['validate_1'][0]:.1f} "
            f"validate_2_s={f['validate_2'][0]:.1f} merge_2_s={f['merge_2'][0]:.1f} "
            f"speedup_2_over_1={f['speedup']:.2f}x same_clean={f['same_clean']} "
            f"nothing_lost={f['nothing_lost']} peak_mib={peak(f)}"
        )
    wrong = [r for r, f in results.items() if not (f["same_clean"] and f["nothing_lost"])]
    if wrong:  # not a timing: figures of a day that lost posts are not figures of the nightly
        raise SystemExit(f"bench scale: days of {wrong} posts lost posts or differ sharded")
    return results


if __name__ == "__main__":
    main()
