#!/usr/bin/env bash
# Build llama.cpp with the TopV patches: the shared libraries llama-cpp-python loads (libllama, libggml*,
# libmtmd, libggml-rpc) plus llama-mtmd-cli, llama-server and ggml-rpc-server (llama.cpp's rpc-server: lends this
# machine's devices to a model loaded elsewhere with --rpc), into a cache directory per llama.cpp commit. Prints that
# directory. Re-running with nothing changed does nothing; a change to patches/ or native/ rebuilds
# incrementally (only the files whose patched content changed are rewritten, so ninja recompiles just those).
#
#   scripts/build_llama_cpp.sh                    # source from the pinned llama-cpp-python sdist (PyPI)
#   scripts/build_llama_cpp.sh --source DIR       # your own pristine checkout of llama.cpp commit 0c1e57098bba
#   scripts/build_llama_cpp.sh --print-dir        # print the install directory, build nothing
#   scripts/build_llama_cpp.sh --print-pristine   # print the unpatched source tree (for making patches)
#   scripts/build_llama_cpp.sh --backend vulkan   # cpu | vulkan | cuda | metal: one cached build per backend
#   scripts/build_llama_cpp.sh --libs             # only the libraries (what topv_edge and llama-cpp-python load)
#   CMAKE_ARGS="-DGGML_BLAS=ON" scripts/build_llama_cpp.sh    # extra CMake flags, passed through
#
# --backend defaults to TOPV_EDGE_BACKEND, else what the machine has: metal on macOS, cuda when nvidia-smi
# lists a GPU, vulkan when vulkaninfo shows a real (not CPU) GPU and glslc is installed, else cpu.
# Environment: TOPV_EDGE_LLAMA_DIR (install directory; default below), TOPV_EDGE_BACKEND, CMAKE_ARGS, JOBS,
# TARGETS (the CMake targets; default: the libraries, llama-mtmd-cli, llama-server, llama-quantize, ggml-rpc-server;
# --libs: llama mtmd ggml-rpc). The stamp records the targets built, so a later call for more builds only those.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION=0.3.36
repo=$(cd "$(dirname "$0")/.." && pwd)
patches=("$repo"/patches/*.patch)

source_dir=""
print_only=""
libs_only=""
backend="${TOPV_EDGE_BACKEND:-}"
while [ $# -gt 0 ]; do
    case "$1" in
        --source) source_dir=$(cd "$2" && pwd); shift 2 ;;
        --backend) [ $# -ge 2 ] || { echo "build_llama_cpp.sh: --backend needs a value: cpu, vulkan, cuda or metal" >&2; exit 2; }
                   backend=$2; shift 2 ;;
        --backend=*) backend="${1#--backend=}"; shift ;;
        --print-dir) print_only=dir; shift ;;
        --print-pristine) print_only=pristine; shift ;;
        --libs) libs_only=1; shift ;;
        -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build_llama_cpp.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

# what this machine can run (the default backend): a GPU llama.cpp would use, else the CPU
detect_backend() {
    if [ "$(uname -s)" = Darwin ]; then echo metal; return; fi
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then echo cuda; return; fi
    if command -v glslc >/dev/null 2>&1 && command -v vulkaninfo >/dev/null 2>&1 &&
       vulkaninfo --summary 2>/dev/null | grep -Eq 'PHYSICAL_DEVICE_TYPE_(DISCRETE|INTEGRATED)_GPU'; then
        echo vulkan; return
    fi
    echo cpu
}
[ -n "$backend" ] || backend=$(detect_backend)
case "$backend" in
    cpu)    backend_args=(-DGGML_METAL=OFF -DGGML_CUDA=OFF -DGGML_VULKAN=OFF) ;;
    vulkan) backend_args=(-DGGML_VULKAN=ON -DGGML_METAL=OFF) ;;
    cuda)   backend_args=(-DGGML_CUDA=ON -DGGML_METAL=OFF) ;;
    metal)  backend_args=(-DGGML_METAL=ON) ;;
    *) echo "build_llama_cpp.sh: --backend must be cpu, vulkan, cuda or metal, got '$backend'" >&2; exit 2 ;;
esac

# The cache layout and the sources' hashes have one definition, topv_edge/llama/build.py (stdlib only): it sets
# llama_cpp_commit, cache_root, prefix (TOPV_EDGE_LLAMA_DIR, else the backend's directory), patch_hash, native_hash,
# library_targets and program_targets
eval "$(python3 "$repo/topv_edge/llama/build.py" shell --backend "$backend")"
LLAMA_CPP_COMMIT=$llama_cpp_commit
pristine="${source_dir:-$cache_root/llama.cpp-$LLAMA_CPP_COMMIT-pristine}"
if [ "$print_only" = dir ]; then echo "$prefix"; exit 0; fi
# an extracted pristine tree is never changed: no need to wait for a running build to print it
if [ "$print_only" = pristine ] && [ -f "$pristine/CMakeLists.txt" ]; then echo "$pristine"; exit 0; fi

mkdir -p "$cache_root" "$prefix"
# the shared pristine tree is extracted by one process at a time (several shells, CI and tests may ask at once)
exec 8>"$cache_root/pristine.lock"
flock 8

# the unpatched source: llama-cpp-python's sdist vendors exactly the llama.cpp commit it binds
if [ ! -f "$pristine/CMakeLists.txt" ]; then
    dl="$cache_root/download"
    mkdir -p "$dl"
    sdist="$dl/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
    if [ ! -f "$sdist" ]; then
        echo "downloading llama-cpp-python $LLAMA_CPP_PYTHON_VERSION source (vendors llama.cpp $LLAMA_CPP_COMMIT)..." >&2
        python -m pip download --quiet --no-deps --no-binary llama-cpp-python \
            "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$dl" >&2
    fi
    rm -rf "$pristine.tmp" && mkdir -p "$pristine.tmp"
    tar -xzf "$sdist" -C "$pristine.tmp" --strip-components=3 "llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp"
    rm -f "$pristine.tmp/.git"  # a submodule pointer of the sdist's own repository
    rm -rf "$pristine" && mv "$pristine.tmp" "$pristine"
fi
flock -u 8
if [ "$print_only" = pristine ]; then echo "$pristine"; exit 0; fi
# one build at a time per build directory (the backends' builds are independent)
exec 9>"$prefix/.build.lock"
flock 9

stamp="$prefix/.built"
# TARGETS: what to build (the sanitizer build skips llama-quantize, which no test runs under it)
default_targets="$library_targets"
[ -n "$libs_only" ] || default_targets="$library_targets $program_targets"
read -r -a targets <<< "${TARGETS:-$default_targets}"
# The stamp: line 1 what the build is made from (rpc=on: caches built before the RPC backend was configured
# rebuild once to get it), line 2 the targets built from it. Up to date when line 1 matches and every target
# asked for is on line 2.
want="commit=$LLAMA_CPP_COMMIT rpc=on patches=$patch_hash native=$native_hash backend=$backend cmake_args=${CMAKE_ARGS:-}"
built=()
if [ -f "$stamp" ] && [ "$(sed -n 1p "$stamp")" = "$want" ]; then
    read -r -a built <<< "$(sed -n 2p "$stamp" | sed 's/^targets=//')"
fi
missing=()
for t in "${targets[@]}"; do  # not built from these sources, or a program that is no longer in bin/
    case " ${built[*]-} " in
        *" $t "*) case " $library_targets " in *" $t "*) ;; *) [ -f "$prefix/bin/$t" ] || missing+=("$t") ;; esac ;;
        *) missing+=("$t") ;;
    esac
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "patched llama.cpp is up to date" >&2
    echo "$prefix"
    exit 0
fi
# other sources than the programs in bin/ were built from: drop them, so none stays behind stale
[ ${#built[@]} -gt 0 ] || rm -f "$prefix"/bin/*

# Patch a fresh copy of the pristine tree, then bring $prefix/src to it file by file: unchanged files keep
# their timestamps, so the build below recompiles only what the patches changed since the last build.
src="$prefix/src"
staging="$prefix/src.staging"
rm -rf "$staging" && cp -a "$pristine" "$staging"
for p in "${patches[@]}"; do
    if ! patch -d "$staging" -p1 --forward --silent --no-backup-if-mismatch < "$p" >&2; then
        echo "error: $(basename "$p") does not apply to llama.cpp $LLAMA_CPP_COMMIT (after the patches before it)" >&2
        exit 1
    fi
done
python "$repo/scripts/sync_tree.py" "$staging" "$src" >&2
rm -rf "$staging"

build="$prefix/build"
# shellcheck disable=SC2086
cmake -S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_COMMON=ON \
    -DMTMD_TOPV_NATIVE_DIR="$repo/native" \
    -DGGML_RPC=ON \
    "${backend_args[@]}" ${CMAKE_ARGS:-} >&2
cmake --build "$build" --target "${targets[@]}" -j "${JOBS:-$(nproc 2>/dev/null || sysctl -n hw.ncpu)}" >&2

# Install by rename, and only what changed: a process may have these libraries mapped right now (the tests
# build the programs on first use from inside a process that loaded the libraries), and overwriting a mapped
# file in place crashes it; a rename leaves it the old file.
install_file() {  # SRC DIR
    local dst="$2/$(basename "$1")"
    if [ -L "$1" ]; then
        [ "$(readlink "$1")" = "$(readlink "$dst" 2>/dev/null)" ] && return 0
    elif [ -f "$dst" ] && [ ! -L "$dst" ] && cmp -s "$1" "$dst"; then
        return 0
    fi
    cp -P "$1" "$dst.tmp.$$" && mv -f "$dst.tmp.$$" "$dst"
}
mkdir -p "$prefix/lib" "$prefix/bin"
while IFS= read -r -d '' f; do install_file "$f" "$prefix/lib"; done \
    < <(find "$build/bin" -maxdepth 1 \( -name 'lib*.so*' -o -name 'lib*.dylib' -o -name '*.dll' \) -print0)
for t in "${targets[@]}"; do  # the programs among the targets (llama and mtmd are the libraries above)
    if [ -f "$build/bin/$t" ]; then install_file "$build/bin/$t" "$prefix/bin"; fi
done
all_built=(${built[@]+"${built[@]}"})
for t in "${missing[@]}"; do case " ${all_built[*]-} " in *" $t "*) ;; *) all_built+=("$t") ;; esac; done
printf '%s\ntargets=%s\n' "$want" "${all_built[*]}" > "$stamp"
echo "$prefix"
