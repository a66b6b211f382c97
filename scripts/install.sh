#!/usr/bin/env bash
# Set-up in one step: build the TopV-patched llama.cpp once (scripts/build_llama_cpp.sh), then install
# topv-edge and its dependencies, with llama-cpp-python taking its libraries from that build instead of
# compiling a llama.cpp of its own. Extra CMake flags for llama.cpp: CMAKE_ARGS="-DGGML_CUDA=ON" ...
# Arguments are passed to pip (default: ".[test]").
set -euo pipefail
cd "$(dirname "$0")/.."

llama_dir=$(bash scripts/build_llama_cpp.sh)
echo "patched llama.cpp: $llama_dir" >&2

# LLAMA_BUILD=OFF: llama-cpp-python's Python bindings only; topv_edge points them at $llama_dir/lib
CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" python -m pip install "${@:-.[test]}"
