#!/usr/bin/env bash
# Set-up in one step: build the TopV-patched llama.cpp's libraries once (scripts/build_llama_cpp.sh --libs), then install
# topv-edge and its dependencies, with llama-cpp-python taking its libraries from that build instead of
# compiling a llama.cpp of its own.
#
#   scripts/install.sh                     # the machine's backend (Metal on macOS, CUDA with an NVIDIA GPU, else CPU)
#   scripts/install.sh --backend vulkan    # cpu | vulkan | cuda | metal (see build_llama_cpp.sh --help)
#   scripts/install.sh -e '.[test]'        # other arguments go to pip (default: ".[test]")
#
# The backend installed is recorded in the build cache (installed-backend): topv_edge loads that build unless
# TOPV_EDGE_BACKEND or TOPV_EDGE_LLAMA_DIR says otherwise. Extra CMake flags for llama.cpp: CMAKE_ARGS=...
set -euo pipefail
cd "$(dirname "$0")/.."

build_args=()
pip_args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --backend) [ $# -ge 2 ] || { echo "install.sh: --backend needs a value: cpu, vulkan, cuda or metal" >&2; exit 2; }
                   build_args+=(--backend "$2"); shift 2 ;;
        --backend=*) build_args+=(--backend "${1#--backend=}"); shift ;;
        *) pip_args+=("$1"); shift ;;
    esac
done

# --libs: only what topv_edge loads; llama.cpp's programs (llama-server, llama-mtmd-cli, ...) are built on first
# use (topv_edge.llama.build.program) or by scripts/build_llama_cpp.sh without --libs
llama_dir=$(bash scripts/build_llama_cpp.sh --libs ${build_args[@]+"${build_args[@]}"})
echo "patched llama.cpp: $llama_dir" >&2

# LLAMA_BUILD=OFF: llama-cpp-python's Python bindings only; topv_edge points them at $llama_dir/lib
[ ${#pip_args[@]} -gt 0 ] || pip_args=(".[test]")
CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" python -m pip install "${pip_args[@]}"

# which build topv_edge loads by default (not when TOPV_EDGE_LLAMA_DIR chose a directory of its own)
if [ -z "${TOPV_EDGE_LLAMA_DIR:-}" ]; then
    backend=${llama_dir##*-}
    cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/topv-edge"
    echo "$backend" > "$cache_root/installed-backend"
    echo "topv_edge will load the $backend build" >&2
fi
