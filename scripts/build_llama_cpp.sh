#!/usr/bin/env bash
# Build llama.cpp with the TopV patch: the shared libraries llama-cpp-python loads (libllama, libggml*,
# libmtmd) plus llama-mtmd-cli and llama-server, once, into a cache directory keyed by the llama.cpp
# commit and the patch. Prints that directory. Re-running with nothing changed does nothing.
#
#   scripts/build_llama_cpp.sh                    # source from the pinned llama-cpp-python sdist (PyPI)
#   scripts/build_llama_cpp.sh --source DIR       # your own checkout of llama.cpp commit 0c1e57098bba
#   CMAKE_ARGS="-DGGML_CUDA=ON" scripts/build_llama_cpp.sh    # extra CMake flags (Metal is on by default on macOS)
#
# Environment: TOPV_EDGE_LLAMA_DIR (install directory; default below), CMAKE_ARGS, JOBS (parallel jobs).
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION=0.3.36
LLAMA_CPP_COMMIT=0c1e57098bba
repo=$(cd "$(dirname "$0")/.." && pwd)
patches=("$repo"/patches/*.patch)

source_dir=""
while [ $# -gt 0 ]; do
    case "$1" in
        --source) source_dir=$(cd "$2" && pwd); shift 2 ;;
        --print-dir) print_only=1; shift ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build_llama_cpp.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

# The install directory: the same computation as topv_edge/llama_libs.py (sha256 of the patches, 8 hex digits)
patch_hash=$(cat "${patches[@]}" | sha256sum | cut -c1-8)
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/topv-edge"
prefix="${TOPV_EDGE_LLAMA_DIR:-$cache_root/llama.cpp-$LLAMA_CPP_COMMIT-$patch_hash}"
if [ "${print_only:-0}" = 1 ]; then echo "$prefix"; exit 0; fi

stamp="$prefix/.built"
want="commit=$LLAMA_CPP_COMMIT patch=$patch_hash native=$(sha256sum "$repo"/native/src/* "$repo"/native/include/* | sha256sum | cut -c1-8) cmake_args=${CMAKE_ARGS:-}"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    echo "patched llama.cpp is up to date" >&2
    echo "$prefix"
    exit 0
fi

mkdir -p "$prefix"
src="$prefix/src"
if [ -n "$source_dir" ]; then
    src="$source_dir"
elif [ ! -f "$src/CMakeLists.txt" ]; then
    # llama-cpp-python's sdist vendors exactly the llama.cpp commit it binds
    dl="$cache_root/download"
    mkdir -p "$dl"
    sdist="$dl/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
    if [ ! -f "$sdist" ]; then
        echo "downloading llama-cpp-python $LLAMA_CPP_PYTHON_VERSION source (vendors llama.cpp $LLAMA_CPP_COMMIT)..." >&2
        python -m pip download --quiet --no-deps --no-binary llama-cpp-python --no-build-isolation \
            "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$dl" >&2
    fi
    rm -rf "$src.tmp" && mkdir -p "$src.tmp"
    tar -xzf "$sdist" -C "$src.tmp" --strip-components=3 "llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp"
    rm -rf "$src" && mv "$src.tmp" "$src"
fi

# Apply the patches idempotently: skip those already applied, fail clearly on a mismatching tree
for p in "${patches[@]}"; do
    if patch -d "$src" -p1 -R --dry-run --silent --force < "$p" > /dev/null 2>&1; then
        echo "already applied: $(basename "$p")" >&2
    elif patch -d "$src" -p1 --dry-run --silent --force < "$p" > /dev/null 2>&1; then
        patch -d "$src" -p1 --silent --force < "$p" >&2
        echo "applied: $(basename "$p")" >&2
    else
        echo "error: $(basename "$p") does not apply to $src (is it llama.cpp commit $LLAMA_CPP_COMMIT?)" >&2
        exit 1
    fi
done

build="$prefix/build"
# shellcheck disable=SC2086
cmake -S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_COMMON=ON \
    -DMTMD_TOPV_NATIVE_DIR="$repo/native" \
    ${CMAKE_ARGS:-} >&2
cmake --build "$build" --target llama mtmd llama-mtmd-cli llama-server -j "${JOBS:-$(nproc 2>/dev/null || sysctl -n hw.ncpu)}" >&2

mkdir -p "$prefix/lib" "$prefix/bin"
find "$build/bin" -maxdepth 1 \( -name 'lib*.so*' -o -name 'lib*.dylib' -o -name '*.dll' \) -exec cp -P {} "$prefix/lib/" \;
cp "$build/bin/llama-mtmd-cli" "$build/bin/llama-server" "$prefix/bin/"
echo "$want" > "$stamp"
echo "$prefix"
