#!/usr/bin/env bash
# The TopV stage under AddressSanitizer + UndefinedBehaviorSanitizer: builds the patched llama.cpp libraries (libllama,
# and libmtmd with the stage and the pass) with both sanitizers into its own cache directory, then runs the stage's
# tests (every family, bad inputs, keep extremes) against that build with the sanitizer runtimes preloaded into
# Python. Any sanitizer report ends the run with a non-zero exit code.
#
#   scripts/sanitize_stage.sh                 # build (cached) + the stage tests
#   scripts/sanitize_stage.sh -x              # extra arguments go to pytest (a -k of your own replaces the one below)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/topv-edge"
export TOPV_EDGE_LLAMA_DIR="$cache_root/llama.cpp-0c1e57098bba-cpu-asan"
TARGETS="llama mtmd" CMAKE_ARGS="-DLLAMA_SANITIZE_ADDRESS=ON -DLLAMA_SANITIZE_UNDEFINED=ON -DGGML_SANITIZE_ADDRESS=ON -DGGML_SANITIZE_UNDEFINED=ON" \
    bash scripts/build_llama_cpp.sh --backend cpu >&2

# Python itself is not instrumented: the runtimes must be loaded first. Python's allocator and numba hold memory
# until exit, so leak reports are off; everything else (overflows, use-after-free, UB) stops the process.
asan=$(gcc -print-file-name=libasan.so)
ubsan=$(gcc -print-file-name=libubsan.so)
export LD_PRELOAD="$asan:$ubsan"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
stage_tests=(tests/llama/test_llama_patch.py)
for t in tests/llama/test_families_stage.py tests/llama/test_families_tiled.py tests/llama/test_video.py tests/llama/test_inputs.py; do [ -f "$t" ] && stage_tests+=("$t"); done
# the libraries only (libllama, libmtmd with the stage and the pass): the command-line binaries' own tests run on
# the regular build; here everything that goes through the stage from Python
python -m pytest -q -p no:cacheprovider "${stage_tests[@]}" -k "not mtmd_cli and not llama_server" "$@"
