#!/usr/bin/env bash
# Build llama.cpp's own tests on the patched tree and run its `main`-label ctest tests that need no download: the
# patches must keep upstream's behaviour outside the TopV hooks (patches/01's position checks, for one, are
# relaxed only on contexts the stage prunes in: test-batch-alloc checks upstream's rules).
#
#   scripts/llama_tests.sh            # build (cached, incremental) and run; prints ctest's summary
#   JOBS=1 scripts/llama_tests.sh     # fewer compile jobs
#
# The build has a directory of its own (TOPV_EDGE_LLAMA_TESTS_DIR, default ~/.cache/topv-edge/llama.cpp-<commit>-tests),
# made by scripts/build_llama_cpp.sh with LLAMA_BUILD_TESTS=ON and only the test programs as targets, so it never
# touches the build the Python package and the other tests load. assert() stays on (no NDEBUG): most of llama.cpp's
# tests check with assert, which a plain Release build would compile out.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/topv-edge"
export TOPV_EDGE_LLAMA_DIR="${TOPV_EDGE_LLAMA_TESTS_DIR:-$cache_root/llama.cpp-0c1e57098bba-tests}"

# The programs of the main-label tests run below (ctest names that differ: test-tokenizer-0-* run test-tokenizer-0,
# test-tokenizer-1-llama-spm runs test-tokenizer-1-spm, test-generate-models runs test-llama-archs).
targets=(
    test-tokenizer-0 test-tokenizer-1-spm test-unicode test-sampling test-reasoning-budget test-grammar-parser
    test-grammar-integration test-llama-grammar test-batch-alloc test-chat test-json-schema-to-grammar
    test-llama-archs test-recurrent-state-rollback test-save-load-state
    test-chat-peg-parser test-jinja test-json-schema test-chat-auto-parser test-chat-template test-log test-peg-parser
    test-model-resolution test-opt test-tiled-mulmat
    test-barrier test-quantize-fns test-quantize-perf test-rope test-col2im-1d
    test-mtmd-c-api test-mtmd-impl test-gguf test-alloc
    ggml-rpc-server test-rpc-multi-server
)
# Left out of the main label, by name, because they need the network:
#   test-tokenizers-ggml-vocabs  clones a vocabulary repository from the Hugging Face hub
#   test-download-model          downloads tinyllamas/stories15M (the fixture of the next one)
#   test-thread-safety           runs that downloaded model
#   test-arg-parser              fetches http://ggml.ai/ (common_remote_get_content)
# (the `model` label's tests need that download too; test-jinja-py is label `python`)
excluded='^(test-tokenizers-ggml-vocabs|test-download-model|test-thread-safety|test-arg-parser)$'

TARGETS="${targets[*]}" \
CMAKE_ARGS="${CMAKE_ARGS:-} -DLLAMA_BUILD_TESTS=ON -DCMAKE_C_FLAGS_RELEASE=-O2 -DCMAKE_CXX_FLAGS_RELEASE=-O2" \
    bash "$repo/scripts/build_llama_cpp.sh" --backend cpu > /dev/null

cd "$TOPV_EDGE_LLAMA_DIR/build"
ctest -L '^main$' -E "$excluded" --output-on-failure --timeout 900 -j "${JOBS:-$(nproc 2>/dev/null || echo 2)}"
