"""Sanitise + validate throughput (text only), rows/s on 250k-row chunks with ~5% bad rows.

Baseline in the same run: the same row rules written as plain vectorised pandas (no GX, no
report). The ratio shows what the Great Expectations suite, its result document and the
caption sanitiser cost on top of the bare checks.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime

import numpy as np
import pandas as pd

from ml.config import Settings
from ml.ingest.captions import sanitize_captions
from ml.ingest.validate import validate_posts

START, END, NOW = datetime(2026, 11, 20), datetime(2026, 11, 21), datetime(2026, 11, 22)
WORDS = "golden hour beach sunset coffee latte city night ☀️ 夕日 #travel #food dog cat".split()


def make_frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    updated = START + pd.to_timedelta(rng.integers(0, 86_400_000_000, n), unit="us")
    caps = [" ".join(rng.choice(WORDS, 12)) + "\t " for _ in range(n)]
    df = pd.DataFrame(
        {
            "id": np.arange(1, n + 1, dtype=np.int64),
            "author_id": rng.integers(1, 10_000, n),
            "caption": caps,
            "image_uri": [f"2026/11/20/{i}.jpg" for i in range(n)],
            "hearts": rng.integers(0, 500, n),
            "comment_count": rng.integers(0, 700, n),
            "created_at": updated - pd.Timedelta(minutes=5),
            "updated_at": updated,
        }
    )
    bad = rng.random(n) < 0.05
    df.loc[bad, "hearts"] = -1
    return df


def plain_checks(df: pd.DataFrame) -> pd.Series:
    bad = (
        df["id"].isna()
        | df["hearts"].isna()
        | (df["hearts"] < 0)
        | (df["comment_count"] < 0)
        | df["created_at"].isna()
        | (df["created_at"] > NOW)
        | (df["created_at"] > df["updated_at"])
        | (df["updated_at"] < START)
        | (df["updated_at"] >= END)
        | df["caption"].isna()
        | (df["caption"].str.len() > 2200)
        | ~df["image_uri"].str.match(r"^[^:/][^:]*$")
    )
    return bad


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=250_000)
    args = parser.parse_args(argv)
    df = make_frame(args.rows)
    settings = Settings()
    validate_posts(df.head(1000), START, END, NOW, settings)  # warm GX (import, context)
    best_ours = best_base = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        outcome = validate_posts(df, START, END, NOW, settings)
        sanitize_captions(df["caption"])
        best_ours = min(best_ours, time.perf_counter() - t0)
        t0 = time.perf_counter()
        base_bad = plain_checks(df)
        best_base = min(best_base, time.perf_counter() - t0)
    assert len(outcome.row_reasons) == int(base_bad.sum()), "both find the same bad rows"
    ours, base = args.rows / best_ours, args.rows / best_base
    print(f"validate + sanitise: {ours:,.0f} rows/s; bare pandas checks: {base:,.0f} rows/s")
    print(
        f"RESULT validate_sanitize_rows_per_s={ours:.0f} bare_checks={base:.0f} "
        f"ratio={ours / base:.2f}x"
    )
    return {"validate_sanitize_rows_per_s": ours, "bare_checks_rows_per_s": base}


if __name__ == "__main__":
    main()
