"""The probe on every backend: llama_set_n_layer_limit (patches/20-graph-layer-limit.patch) and the stage on the
CPU and Vulkan builds side by side.

The first tests run in this process, on the build topv_edge loads (the CPU one unless TOPV_EDGE_BACKEND says
otherwise): every model graph the project generates builds only the layers the limit asks for. The others run
tests/helpers/backend_runner.py once per (backend, offload) in a child process (one llama.cpp build per process) and compare
what it saw: keep 1.0 bit-identical to pruning off, the kept set = topv_edge.select on the probed features, KV
cells = text + kept, no node above layer Li + 1 computed during the probe, and the pruned logits and answers of
the Vulkan build equal to the CPU build's. A backend whose build is absent is skipped with the command that builds
it (.ci/run builds CPU and Vulkan, so CI runs everything).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import topv_edge
from topv_edge.llama import build as llama_build


from helpers.families import FAMILIES, GENERATED_FAMILIES

HERE = Path(__file__).resolve().parent
EVAL_CB = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.c_void_p, ctypes.c_bool, ctypes.c_void_p)


def node_layer(name: str) -> int:
    """The layer of a graph node named '<name>-<il>' (a ' (view)' or similar suffix ignored), -1 if none."""
    base = name.split(" ", 1)[0]
    head, _, tail = base.rpartition("-")
    return int(tail) if head and tail.isdigit() else -1


class LayerRecorder:
    """An eval callback that wants no tensor and records the highest layer of the nodes the scheduler asks about
    (it asks about every node it computes)."""

    def __init__(self, libs) -> None:
        ggml = ctypes.CDLL(str(next((libs.directory / "lib").glob("libggml-base.*"))))
        ggml.ggml_get_name.argtypes = [ctypes.c_void_p]
        ggml.ggml_get_name.restype = ctypes.c_char_p
        self.max_layer = -1
        self.n_nodes = 0

        def cb(t, ask, user_data):
            if ask:
                self.n_nodes += 1
                self.max_layer = max(self.max_layer, node_layer(ggml.ggml_get_name(t).decode()))
            return False if ask else True

        self.callback = EVAL_CB(cb)

    def reset(self) -> None:
        self.max_layer, self.n_nodes = -1, 0


@pytest.mark.parametrize("family", GENERATED_FAMILIES)
def test_every_generated_model_graph_builds_only_the_layers_of_the_limit(models_dir, libs, family):
    """Decodes one token at a time (the graph is reusable between them) under changing limits; the nodes computed
    must stop at layer limit - 1, and go back to the whole model at limit 0 (the reused graph is invalidated)."""
    L = libs.llama_cpp
    mparams = L.llama_model_default_params()
    mparams.n_gpu_layers = 0
    model = L.llama_model_load_from_file(str(models_dir / f"{family}-tiny.gguf").encode(), mparams)
    assert model
    try:
        n_layer = L.llama_model_n_layer(model)
        assert n_layer >= 4
        p = L.llama_context_default_params()
        p.n_ctx, p.n_batch, p.n_ubatch, p.n_threads, p.n_threads_batch = 256, 32, 32, 2, 2
        ctx = L.llama_init_from_model(model, p)
        assert ctx
        rec = LayerRecorder(libs)
        lib = L.llama_cpp._lib  # the C library (the patch's functions are bound there, topv_edge.llama.libs.load)
        lib.llama_set_eval_callback(ctx, ctypes.cast(rec.callback, ctypes.c_void_p), None)
        batch = L.llama_batch_init(1, 0, 1)
        try:
            seen = []
            limits = [0, 2, 2, 1, 0, 0, n_layer - 1, n_layer + 5]
            for pos, limit in enumerate(limits):
                lib.llama_set_n_layer_limit(ctx, limit)
                assert lib.llama_get_n_layer_limit(ctx) == (limit if limit < n_layer else 0)
                batch.token[0], batch.pos[0], batch.n_seq_id[0], batch.logits[0] = 5 + pos, pos, 1, 1
                batch.seq_id[0][0] = 0
                batch.n_tokens = 1
                rec.reset()
                assert L.llama_decode(ctx, batch) == 0
                assert rec.n_nodes > 0
                seen.append(rec.max_layer)
            want = [(lim if 0 < lim < n_layer else n_layer) - 1 for lim in limits]
            assert seen == want, f"{family}: highest layer computed per decode {seen}, limits {limits}"
            # the output still comes out of the truncated graph (norm and head on layer limit - 1)
            logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), (L.llama_vocab_n_tokens(L.llama_model_get_vocab(model)),))
            assert np.all(np.isfinite(logits))
        finally:
            L.llama_batch_free(batch)
            L.llama_free(ctx)
    finally:
        L.llama_model_free(model)


# --- the stage on each backend, in child processes ---------------------------------------------------------------

LAYER = 1  # the tiny models have 4 layers: Li = 1 builds layers 0..2 and leaves layer 3 out (Li = 2 would build all)
KEEP = 0.25
# the CPU and Vulkan builds compute in different orders (Vulkan: f16 matrix products, other reductions): the same
# prompt's logits agree to this fraction of their spread
LOGIT_TOLERANCE = 2e-2


def vulkan_device_visible() -> str | None:
    """Why Vulkan cannot run here (None: it can): the loader and a device (llvmpipe counts)."""
    exe = shutil.which("vulkaninfo")
    if not exe:
        return "vulkaninfo is not installed (apt-get install vulkan-tools mesa-vulkan-drivers libvulkan-dev glslc)"
    r = subprocess.run([exe, "--summary"], capture_output=True, text=True, timeout=60)
    if r.returncode != 0 or "deviceName" not in r.stdout:
        return f"no Vulkan device: vulkaninfo --summary failed ({(r.stderr or r.stdout).strip()[-300:]})"
    return None


def backend_env(backend: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TOPV_EDGE_LLAMA_DIR", "LLAMA_CPP_LIB_PATH", "MTMD_CPP_LIB")}
    env["TOPV_EDGE_BACKEND"] = backend
    # the child imports the topv_edge this process tests (the checkout's under python -m pytest)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(topv_edge.__file__).resolve().parents[1]),
                                         *filter(None, [os.environ.get("PYTHONPATH")])])
    if backend == "vulkan":
        build = llama_build.backend_build_dir("vulkan")
        env.setdefault("GGML_VK_VISIBLE_DEVICES", "0")  # ggml-vulkan hides CPU-type devices (llvmpipe) otherwise
        env.setdefault("MESA_SHADER_CACHE_DIR", str(build / "mesa-shader-cache"))  # ~70 s of shader compiles, once
    return env


def require_build(backend: str) -> None:
    directory = llama_build.backend_build_dir(backend)
    if not (directory / "lib").is_dir():
        pytest.skip(f"the {backend} build of llama.cpp is absent ({directory}): "
                    f"bash scripts/build_llama_cpp.sh --backend {backend} builds it (.ci/run does)")
    if backend == "vulkan":
        why = vulkan_device_visible()
        if why:
            pytest.skip(why)


_RUNS: dict[tuple, dict] = {}


def stage_run(models_dir: Path, picture: Path, tmp_root: Path, backend: str, ngl: int | str,
              mmproj_offload: bool = True, families: tuple[str, ...] = FAMILIES) -> dict:
    """tests/helpers/backend_runner.py on `backend` (cached per session): per family, pruning off, keep 1.0 and keep 0.25
    at layer LAYER: logits, answer, KV cell positions, kept set, probed features, stats."""
    key = (backend, ngl, mmproj_offload, families)
    if key not in _RUNS:
        require_build(backend)
        out = tmp_root / f"run-{backend}-{ngl}-{int(mmproj_offload)}"
        out.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(HERE.parent / "helpers" / "backend_runner.py"), "--models", str(models_dir), "--picture", str(picture),
               "--out", str(out), "--ngl", str(ngl), "--layer", str(LAYER), "--keep", str(KEEP),
               "--families", *families]
        if not mmproj_offload:
            cmd.append("--no-mmproj-offload")
        r = subprocess.run(cmd, capture_output=True, text=True, env=backend_env(backend), timeout=1200)
        assert r.returncode == 0, f"backend_runner on {backend} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
        meta = json.loads((out / "meta.json").read_text())
        arrays = dict(np.load(out / "arrays.npz"))
        _RUNS[key] = {"meta": meta, "arrays": arrays}
    return _RUNS[key]


@pytest.fixture(scope="session")
def run_root(tmp_path_factory):
    return tmp_path_factory.mktemp("backend-runs")


# the GPU backend compared with the CPU build: Vulkan (Mesa's llvmpipe in CI); scripts/gpu_check.sh sets cuda/metal
GPU = os.environ.get("TOPV_EDGE_TEST_GPU_BACKEND", "vulkan")
# (backend, --ngl): CPU; the GPU with every layer; the GPU with half of the 4 blocks: llama.cpp counts the output
# layer as one more, so --ngl 3 puts blocks 2, 3 and the head on the GPU, 0, 1 on the CPU. The probe of layer 1 then
# spans both backends: block 2 (Li + 1) runs on the GPU, and only the layer limit keeps block 3 from running there.
NGL_HALF = 3
CONFIGS = [("cpu", 0), (GPU, 99), (GPU, NGL_HALF)]


@pytest.mark.parametrize("backend, ngl", CONFIGS)
@pytest.mark.parametrize("family", FAMILIES)
def test_stage_on_backend(models_dir, picture, run_root, backend, ngl, family):
    run = stage_run(models_dir, picture, run_root, backend, ngl)
    meta, a = run["meta"][family], run["arrays"]
    f = family
    # the build that ran is the one asked for, and the text model ran on its GPU device (not silently on the CPU)
    assert run["meta"]["_backend"] == backend
    if backend != "cpu":
        assert run["meta"]["_gpu_devices"], f"the {backend} build found no GPU device"
    # keep = 1.0: no probe at all, bit-identical to pruning off
    assert np.array_equal(a[f"{f}/off/logits"], a[f"{f}/keep1/logits"])
    assert meta["off"]["answer"] == meta["keep1"]["answer"]
    assert np.array_equal(a[f"{f}/off/kv"], a[f"{f}/keep1/kv"])
    assert meta["keep1"]["probe_max_layer"] == -1
    # pruned: the kept set is what topv_edge.select returns on the probed features
    pr = meta["pruned"]
    assert pr["pruned"], pr
    idx, _ = topv_edge.select(a[f"{f}/pruned/source"], a[f"{f}/pruned/target"], grid=(pr["grid_w"], pr["grid_h"]),
                              keep=KEEP, method="topv")
    assert np.array_equal(a[f"{f}/pruned/kept"], idx)
    # KV cells = text + kept, at positions the unpruned prompt has too
    assert len(a[f"{f}/pruned/kv"]) == pr["n_text"] + pr["n_kept"]
    assert set(a[f"{f}/pruned/kv"].tolist()) <= set(a[f"{f}/off/kv"].tolist())
    # no node of a layer above Li + 1 was computed during the probe (the target of layer Li was)
    assert LAYER <= pr["probe_max_layer"] <= LAYER + 1, pr["probe_max_layer"]


@pytest.mark.parametrize("ngl", [99, NGL_HALF])
@pytest.mark.parametrize("family", FAMILIES)
def test_gpu_prunes_like_the_cpu_build(models_dir, picture, run_root, family, ngl):
    """Same kept set, same answers, logits within LOGIT_TOLERANCE of their spread, unpruned and pruned."""
    vk = stage_run(models_dir, picture, run_root, GPU, ngl)
    cpu = stage_run(models_dir, picture, run_root, "cpu", 0)
    f = family
    for mode in ("off", "pruned"):
        lc, lv = cpu["arrays"][f"{f}/{mode}/logits"], vk["arrays"][f"{f}/{mode}/logits"]
        err = np.max(np.abs(lc - lv)) / np.std(lc)
        assert err < LOGIT_TOLERANCE, f"{mode}: max |cpu - {GPU}| = {err:.2e} of the logits' spread"
        assert cpu["meta"][f][mode]["answer"] == vk["meta"][f][mode]["answer"]
    assert np.array_equal(cpu["arrays"][f"{f}/pruned/kept"], vk["arrays"][f"{f}/pruned/kept"])


def test_gpu_with_the_encoder_on_the_cpu_prunes_like_the_cpu_build(models_dir, picture, run_root):
    """--no-mmproj-offload: the image encoder runs on the CPU, the text model on the GPU."""
    vk = stage_run(models_dir, picture, run_root, GPU, 99, mmproj_offload=False, families=("llava",))
    cpu = stage_run(models_dir, picture, run_root, "cpu", 0)
    assert vk["meta"]["_mmproj_offload"] is False
    for f in ("llava",):
        assert np.array_equal(cpu["arrays"][f"{f}/pruned/kept"], vk["arrays"][f"{f}/pruned/kept"])
        assert cpu["meta"][f]["pruned"]["answer"] == vk["meta"][f]["pruned"]["answer"]


# --- which build topv_edge loads ---------------------------------------------------------------------------------


def test_build_selection_follows_the_environment_then_the_installed_marker(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for var in ("TOPV_EDGE_LLAMA_DIR", "TOPV_EDGE_BACKEND"):
        monkeypatch.delenv(var, raising=False)
    cache = tmp_path / "topv-edge"
    commit = llama_build.LLAMA_CPP_COMMIT
    assert llama_build.build_dir() == cache / f"llama.cpp-{commit}-cpu"           # nothing installed: the CPU build
    cache.mkdir()
    (cache / "installed-backend").write_text("vulkan\n")                         # what scripts/install.sh writes
    assert llama_build.build_dir() == cache / f"llama.cpp-{commit}-vulkan"
    monkeypatch.setenv("TOPV_EDGE_BACKEND", "cuda")
    assert llama_build.build_dir() == cache / f"llama.cpp-{commit}-cuda"
    monkeypatch.setenv("TOPV_EDGE_LLAMA_DIR", str(tmp_path / "mine"))
    assert llama_build.build_dir() == tmp_path / "mine"
    monkeypatch.delenv("TOPV_EDGE_LLAMA_DIR")
    monkeypatch.setenv("TOPV_EDGE_BACKEND", "opencl")
    with pytest.raises(llama_build.LlamaBuildMissing, match="one of cpu, vulkan, cuda, metal"):
        llama_build.build_dir()


CHECKOUT = Path(__file__).resolve().parents[2]  # the sources the tests belong to (pytest may run an installed package)


def test_a_build_of_other_sources_is_named_with_its_rebuild_command(tmp_path):
    hashes = llama_build.source_hashes(CHECKOUT)
    assert hashes is not None  # the checkout's patches/ and native/ (also when the tests run an installed package)
    build = tmp_path / "llama.cpp-x-vulkan"
    build.mkdir()
    stamp = f"commit={llama_build.LLAMA_CPP_COMMIT} patches={hashes[0]} native={hashes[1]} backend=vulkan cmake_args="
    (build / ".built").write_text(stamp + "\n")
    assert llama_build.stale_build_message(build, CHECKOUT) is None
    assert llama_build.build_backend(build) == "vulkan"
    (build / ".built").write_text(stamp.replace(hashes[1], "0" * 16) + "\n")
    msg = llama_build.stale_build_message(build, CHECKOUT)
    assert msg and "bash scripts/build_llama_cpp.sh --backend vulkan" in msg


def test_the_stamp_keeps_cmake_flags_with_spaces_and_the_targets_built(tmp_path):
    (tmp_path / ".built").write_text("commit=c rpc=on patches=p native=n backend=cuda cmake_args=-DA=1 -DB=two words\n"
                                     "targets=llama mtmd ggml-rpc llama-server\n")
    stamp = llama_build.read_stamp(tmp_path)
    assert stamp["backend"] == "cuda" and stamp["cmake_args"] == "-DA=1 -DB=two words"
    assert stamp["targets"].split() == ["llama", "mtmd", "ggml-rpc", "llama-server"] and "-DB" not in stamp
    assert llama_build.read_stamp(tmp_path / "absent") == {} and llama_build.build_backend(tmp_path / "absent") == "cpu"


def test_the_build_script_and_python_agree_on_the_source_hashes_and_directories():
    """build_llama_cpp.sh writes the stamp that stale_build_message() compares: the same hashes, the same paths."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "build_llama_cpp.sh"
    for backend in llama_build.BACKENDS:
        r = subprocess.run(["bash", str(script), "--backend", backend, "--print-dir"], capture_output=True,
                           text=True, env={k: v for k, v in os.environ.items() if k != "TOPV_EDGE_LLAMA_DIR"})
        assert r.returncode == 0, r.stderr
        assert Path(r.stdout.strip()) == llama_build.backend_build_dir(backend)
    root = Path(__file__).resolve().parents[2]
    sh = subprocess.run(["bash", "-c", 'cat patches/*.patch | sha256sum | cut -c1-16; find native -type f ! -path '
                         '"native/tests/*" | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16'],
                        cwd=root, capture_output=True, text=True, check=True)
    assert tuple(sh.stdout.split()) == llama_build.source_hashes(CHECKOUT)
