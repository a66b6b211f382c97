"""The patched llama-mtmd-cli / llama-server on bad input: a clear message and a clean exit, never an abort.

These are upstream behaviours at the pinned commit that patches/30-cli-input-guards.patch and the TopV flags fix
(the binaries are ours to ship): a directory as --image (was std::bad_alloc), a context smaller than the batch
(was GGML_ASSERT(idx >= 0)), a load error lost when stderr is a file (the log's worker thread), and TopV flags that
only the model can check (--topv-layer beyond its layers, an unknown --topv-method).
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from topv_edge.demo import demo_files

from helpers.server import binary  # built on first use

ABORTED = {-signal.SIGABRT, 128 + signal.SIGABRT, 134}


def run(cmd: list[str], timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw)


@pytest.fixture(scope="module")
def demo():
    return demo_files()


def test_a_directory_as_image_is_an_error_not_an_abort(libs, demo, tmp_path):
    model, mmproj, _ = demo
    r = run([binary(libs, "llama-mtmd-cli"), "-m", str(model), "--mmproj", str(mmproj), "--image", str(tmp_path),
             "-p", "hi", "-n", "2"])
    assert r.returncode not in ABORTED, r.stderr[-2000:]
    assert "bad_alloc" not in r.stderr
    assert "not a regular file" in r.stderr


def test_a_context_smaller_than_the_batch_does_not_abort(libs, demo):
    model, mmproj, picture = demo
    r = run([binary(libs, "llama-mtmd-cli"), "-m", str(model), "--mmproj", str(mmproj), "--image", str(picture),
             "-p", "How many shapes are there?", "-n", "2", "-c", "10"])
    assert r.returncode not in ABORTED, r.stderr[-2000:]
    assert "GGML_ASSERT" not in r.stderr


def test_a_load_error_reaches_stderr_redirected_to_a_file(libs, demo, tmp_path):
    model, mmproj, picture = demo
    for i in range(3):  # the lost message was a race: 2 runs in 3 printed nothing
        err = tmp_path / f"err{i}.txt"
        with err.open("w") as f:  # swapped files: llama.cpp refuses the mmproj as the main model
            r = subprocess.run([binary(libs, "llama-mtmd-cli"), "-m", str(mmproj), "--mmproj", str(model),
                                "--image", str(picture), "-p", "hi"], stdout=subprocess.DEVNULL, stderr=f,
                               stdin=subprocess.DEVNULL, timeout=120)
        assert r.returncode != 0
        assert "CLIP cannot be used as main model" in err.read_text(), f"run {i}: {err.read_text()!r}"


def test_server_refuses_a_topv_layer_beyond_the_model(libs, demo):
    model, mmproj, _ = demo
    r = run([binary(libs, "llama-server"), "-m", str(model), "--mmproj", str(mmproj), "--topv-keep", "0.25",
             "--topv-layer", "99", "--port", "0"], timeout=120)
    assert r.returncode == 1
    assert "topv: layer 99 is out of range: this model has 4 layers, so the probe layer must be 0..2" in r.stderr


def test_cli_names_the_known_methods_for_an_unknown_one(libs, demo):
    model, mmproj, picture = demo
    r = run([binary(libs, "llama-mtmd-cli"), "-m", str(model), "--mmproj", str(mmproj), "--image", str(picture),
             "-p", "hi", "--topv-keep", "0.25", "--topv-method", "bogus"])
    assert r.returncode == 1
    assert "unknown method 'bogus' (known: topv, uniform" in r.stderr
