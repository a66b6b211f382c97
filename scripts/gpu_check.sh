#!/usr/bin/env bash
# One command for a machine with a GPU: build llama.cpp for its backend (and for the CPU, to compare with),
# run the stage's test suite on it, and benchmark pruned against unpruned on both builds side by side.
#
#   scripts/gpu_check.sh                    # the machine's GPU backend: metal on macOS, cuda with an NVIDIA GPU
#   scripts/gpu_check.sh --backend vulkan   # or say which (vulkan also runs on Mesa's llvmpipe, slowly)
#
# Writes results/gpu_check-<backend>.json (the summary: test outcomes, device, benchmark rows) and
# results/gpu_check-<backend>-bench.json (scripts/bench_e2e.py's own output). Needs the project installed
# (scripts/install.sh); JOBS sets the build's parallel jobs.
set -euo pipefail
cd "$(dirname "$0")/.."

backend=""
while [ $# -gt 0 ]; do
    case "$1" in
        --backend) [ $# -ge 2 ] || { echo "gpu_check.sh: --backend needs a value: cuda, metal or vulkan" >&2; exit 2; }
                   backend=$2; shift 2 ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [ -z "$backend" ]; then
    if [ "$(uname -s)" = Darwin ]; then backend=metal
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then backend=cuda
    else
        echo "gpu_check.sh: no CUDA or Metal GPU found (nvidia-smi lists none, not macOS); pass --backend vulkan" \
             "to check the Vulkan build (Mesa's llvmpipe runs it on the CPU)" >&2
        exit 2
    fi
fi
case "$backend" in
    cuda|metal|vulkan) ;;
    *) echo "gpu_check.sh: --backend must be cuda, metal or vulkan, got '$backend'" >&2; exit 2 ;;
esac

bash scripts/build_llama_cpp.sh --backend cpu >/dev/null
gpu_dir=$(bash scripts/build_llama_cpp.sh --backend "$backend")
if [ "$backend" = vulkan ]; then
    export GGML_VK_VISIBLE_DEVICES="${GGML_VK_VISIBLE_DEVICES:-0}"     # llvmpipe is hidden otherwise
    export MESA_SHADER_CACHE_DIR="${MESA_SHADER_CACHE_DIR:-$gpu_dir/mesa-shader-cache}"
fi
mkdir -p results

status=0
# the CPU/GPU comparison (both builds in child processes), then the existing stage tests on the GPU build
TOPV_EDGE_TEST_GPU_BACKEND=$backend python -m pytest -q tests/llama/test_backends.py \
    --junitxml "results/gpu_check-$backend-backends.xml" || status=1
TOPV_EDGE_BACKEND=$backend python -m pytest -q tests/llama/test_llama_patch.py \
    --junitxml "results/gpu_check-$backend-stage.xml" || status=1
python scripts/bench_e2e.py --backend cpu "$backend" --ngl 99 --presets llava:1b --keep 1.0 0.25 --layer 2 \
    --repeats 2 --json "results/gpu_check-$backend-bench.json" --png "results/gpu_check-$backend-bench.png" || status=1

python - "$backend" "$status" <<'PY'
import json, sys, xml.etree.ElementTree as ET
from pathlib import Path

backend, status = sys.argv[1], int(sys.argv[2])
out = {"backend": backend, "ok": status == 0, "tests": {}}
for part in ("backends", "stage"):
    p = Path(f"results/gpu_check-{backend}-{part}.xml")
    if p.exists():
        s = ET.parse(p).getroot()
        s = s if s.tag == "testsuite" else s.find("testsuite")
        out["tests"][part] = {k: int(s.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
bench = Path(f"results/gpu_check-{backend}-bench.json")
if bench.exists():
    b = json.loads(bench.read_text())
    out["devices"] = b["meta"].get("devices")
    out["bench"] = [{k: r.get(k) for k in ("backend", "keep", "layer", "image_prefill_ms", "image_prefill_ms_ratio",
                                           "ttft_ms", "ttft_ms_ratio", "answer_equals_cpu")} for r in b["rows"]]
Path(f"results/gpu_check-{backend}.json").write_text(json.dumps(out, indent=1))
print(json.dumps(out, indent=1))
PY
exit $status
