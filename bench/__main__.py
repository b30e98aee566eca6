"""`make bench`: every bench module, each printing its figures and a RESULT line.

Benchmarks are not tests: nothing here asserts a time. Each compares against a baseline measured
in the same run, because these machines are noisy. `python -m bench extract images` runs some.
"""

from __future__ import annotations

import importlib
import sys
import time

BENCHES = {
    "dag_parse": "bench.bench_dag_parse",
    "extract": "bench.bench_extract",
    "images": "bench.bench_images",
    "validate": "bench.bench_validate",
    "report": "bench.bench_report",
    "embed": "bench.bench_embed",
    "train": "bench.bench_train",
    "load": "bench.bench_load",
    "scale": "bench.bench_scale",
}


def main(argv: list[str]) -> int:
    names = argv or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"unknown bench {unknown}; choose from {list(BENCHES)}", file=sys.stderr)
        return 2
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        t0 = time.perf_counter()
        importlib.import_module(BENCHES[name]).main([])
        print(f"({name} took {time.perf_counter() - t0:.0f}s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
