"""An mmproj of another family: refused with one sentence that says why, never an abort (issue 21).

A projector marks images (and tiles, rows) with special tokens of its own family's vocabulary: SmolVLM's
`<fake_token_around_image>` and `<global-img>`, MiniCPM-V's `<image>`, `<slice>`... Stock llama.cpp looked them up in
the text model's vocabulary, put LLAMA_TOKEN_NULL in the prompt for a missing one and aborted in the decode
(`GGML_ASSERT(idx >= 0)`, mtmd-helper.cpp), in llama-mtmd-cli and llama-server alike. patches/31-mmproj-marker-tokens
makes mtmd find the missing markers when it loads, refuse images at tokenize time with the reason (text still works),
and mtmd_topv_check_model() says the same, so the Python entry points refuse the pair when they load it.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.server import LlamaServer, binary

ABORTED = {-signal.SIGABRT, 128 + signal.SIGABRT, 134}
QUESTION = "describe"
# (text model's family, mmproj's family, a marker the text model lacks)
BAD_PAIRS = [
    ("llava", "smolvlm", "<global-img>"),
    ("llava", "minicpmv", "<slice>"),
    ("internvl", "minicpmv", "<slice>"),
]
REASON = "marks images with tokens the text model does not have"


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory):
    from topv_edge.lab.synth import write_pair

    out = tmp_path_factory.mktemp("mismatch-models")
    for family in ("llava", "smolvlm", "minicpmv", "internvl"):
        write_pair(family, "tiny", out, seed=0)
    return out


def files(pairs_dir: Path, text: str, proj: str) -> tuple[Path, Path]:
    return pairs_dir / f"{text}-tiny.gguf", pairs_dir / f"mmproj-{proj}-tiny.gguf"


def reason_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if REASON in line]


@pytest.mark.parametrize("text,proj,marker", BAD_PAIRS, ids=[f"{t}+{p}" for t, p, _ in BAD_PAIRS])
def test_the_stage_check_names_the_missing_markers(pairs_dir, libs, text, proj, marker):
    """mtmd_topv_check_model and mtmd_topv_image_input_error, on the pair loaded through the C API."""
    import ctypes

    M, L = libs.mtmd_cpp, libs.llama_cpp
    model_path, mmproj_path = files(pairs_dir, text, proj)
    mparams = L.llama_model_default_params()
    model = L.llama_model_load_from_file(str(model_path).encode(), mparams)
    assert model
    try:
        cparams = M.mtmd_context_params_default()
        cparams.use_gpu, cparams.warmup, cparams.print_timings = False, False, False
        mctx = M.mtmd_init_from_file(str(mmproj_path).encode(), model, cparams)
        assert mctx, "mtmd loads the pair (only images are refused)"
        try:
            why = libs.topv_check_model(mctx, model)
            assert why is not None and REASON in why and marker in why, why
            fn = M._libmtmd.mtmd_topv_image_input_error
            fn.argtypes, fn.restype = [ctypes.c_void_p], ctypes.c_char_p
            assert fn(mctx).decode() == why
        finally:
            M.mtmd_free(mctx)
    finally:
        L.llama_model_free(model)


def test_a_matching_pair_passes_the_check(pairs_dir, libs):
    """The control: each family's own mmproj (and a tiled family's mmproj of the same vocabulary) is accepted."""
    import ctypes

    M, L = libs.mtmd_cpp, libs.llama_cpp
    fn = M._libmtmd.mtmd_topv_image_input_error
    fn.argtypes, fn.restype = [ctypes.c_void_p], ctypes.c_char_p
    for text, proj in (("llava", "llava"), ("smolvlm", "smolvlm"), ("minicpmv", "minicpmv"), ("internvl", "internvl")):
        model_path, mmproj_path = files(pairs_dir, text, proj)
        model = L.llama_model_load_from_file(str(model_path).encode(), L.llama_model_default_params())
        cparams = M.mtmd_context_params_default()
        cparams.use_gpu, cparams.warmup, cparams.print_timings = False, False, False
        mctx = M.mtmd_init_from_file(str(mmproj_path).encode(), model, cparams)
        try:
            assert mctx
            assert fn(mctx) is None and libs.topv_check_model(mctx, model) is None, (text, proj)
        finally:
            M.mtmd_free(mctx)
            L.llama_model_free(model)


@pytest.mark.parametrize("text,proj,marker", BAD_PAIRS, ids=[f"{t}+{p}" for t, p, _ in BAD_PAIRS])
def test_chat_refuses_the_pair_with_one_line(pairs_dir, picture, libs, text, proj, marker):
    model_path, mmproj_path = files(pairs_dir, text, proj)
    r = subprocess.run([sys.executable, "-m", "topv_edge.chat", str(model_path), str(picture), "--mmproj",
                        str(mmproj_path), "-p", QUESTION, "--max-tokens", "2", "--threads", "2"],
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert r.returncode not in ABORTED and r.returncode != 0, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = reason_lines(r.stderr)
    assert len(lines) == 1 and marker in lines[0] and mmproj_path.name in lines[0], r.stderr[-2000:]


@pytest.mark.parametrize("text,proj,marker", BAD_PAIRS, ids=[f"{t}+{p}" for t, p, _ in BAD_PAIRS])
def test_handler_refuses_the_pair(pairs_dir, picture, libs, text, proj, marker):
    import topv_edge
    from llama_cpp import Llama

    model_path, mmproj_path = files(pairs_dir, text, proj)
    llm = Llama(str(model_path), chat_handler=topv_edge.TopVChatHandler(mmproj_path), n_ctx=1024, n_threads=2,
                verbose=False)
    try:
        with pytest.raises(ValueError, match=REASON) as e:
            llm.create_chat_completion(messages=[{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": str(picture)}}, {"type": "text", "text": QUESTION}]}],
                max_tokens=2)
        assert marker in str(e.value) and "\n" not in str(e.value)
    finally:
        llm.close()


def test_stock_llama_cpp_python_handler_gets_an_error_not_an_abort(pairs_dir, picture, libs):
    """llama-cpp-python's own MTMDChatHandler (no TopV code) goes through mtmd_tokenize: an exception now."""
    code = f"""
import topv_edge  # the patched libraries
from llama_cpp import Llama
from llama_cpp.llama_chat_format import MTMDChatHandler
llm = Llama({str(pairs_dir / 'llava-tiny.gguf')!r}, chat_handler=MTMDChatHandler({str(pairs_dir / 'mmproj-smolvlm-tiny.gguf')!r},
            verbose=False), n_ctx=1024, n_threads=2, verbose=False)
try:
    llm.create_chat_completion(messages=[{{"role": "user", "content": [
        {{"type": "image_url", "image_url": {{"url": {picture.as_uri()!r}}}}}, {{"type": "text", "text": "hi"}}]}}],
        max_tokens=2)
except Exception as e:
    print("refused:", type(e).__name__)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert "refused:" in r.stdout
    assert len(reason_lines(r.stderr)) >= 1, r.stderr[-2000:]  # mtmd's log line says why


@pytest.mark.parametrize("flags", [[], ["--topv-keep", "0.25"]], ids=["stock", "topv"])
@pytest.mark.parametrize("text,proj,marker", BAD_PAIRS, ids=[f"{t}+{p}" for t, p, _ in BAD_PAIRS])
def test_mtmd_cli_refuses_the_pair_cleanly(pairs_dir, picture, libs, text, proj, marker, flags):
    model_path, mmproj_path = files(pairs_dir, text, proj)
    r = subprocess.run([binary(libs, "llama-mtmd-cli"), "-m", str(model_path), "--mmproj", str(mmproj_path),
                        "--image", str(picture), "-p", QUESTION, "-n", "2", "-t", "2", "--temp", "0", *flags],
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode not in ABORTED and r.returncode != 0, (r.returncode, r.stderr[-2000:])
    assert "GGML_ASSERT" not in r.stderr
    errors = [line for line in reason_lines(r.stderr) if "error" in line]
    assert len(errors) == 1 and marker in errors[0], r.stderr[-3000:]


@pytest.mark.parametrize("text,proj,marker", BAD_PAIRS, ids=[f"{t}+{p}" for t, p, _ in BAD_PAIRS])
def test_llama_server_answers_an_http_error_and_stays_up(pairs_dir, picture, libs, tmp_path, text, proj, marker):
    model_path, mmproj_path = files(pairs_dir, text, proj)
    log_path = tmp_path / "server.log"
    uri = "data:image/png;base64," + base64.b64encode(picture.read_bytes()).decode()
    with LlamaServer(libs, model_path, mmproj_path, log_path, "--topv-keep", "0.25", n_ctx=1024) as server:
        for _ in range(2):  # the same answer each time: nothing is left stuck
            status, reply = server.chat([{"type": "image_url", "image_url": {"url": uri}},
                                         {"type": "text", "text": QUESTION}])
            assert status == 400, (status, reply)  # the server's answer to any prompt it cannot tokenize
            message = reply["error"]["message"]
            assert REASON in message and marker in message and "\n" not in message, message
        # text still works: the server is up and the slot free
        status, reply = server.chat("hello")
        assert status == 200 and reply["choices"][0]["message"]["content"] is not None, reply
        assert server.proc.poll() is None
    text_log = log_path.read_text(errors="replace")
    assert "GGML_ASSERT" not in text_log
    assert any(REASON in line for line in text_log.splitlines()), text_log[-3000:]  # said at load too (warning)
