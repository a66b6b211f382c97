"""`python -m topv_edge.chat` and `TopVChatHandler` end to end on the tiny generated models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.families import FAMILIES
from topv_edge.demo import DEMO_MODEL

QUESTION = "What is in the picture?"


def chat(*args: str, stdin: str | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "topv_edge.chat", *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("flags", [[], ["--layer", "2", "--method", "topv"]], ids=["default", "probed"])
def test_one_shot_json_report_is_consistent(models_dir, picture, libs, family, flags):
    r = chat(str(models_dir / f"{family}-tiny.gguf"), str(picture), "--prompt", QUESTION, "--keep", "0.25",
             "--json", "--max-tokens", "6", "--threads", "2", *flags)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    (image,) = report["images"]
    assert image["pruned"] and report["kept_tokens"] == round(0.25 * report["image_tokens"]) == image["n_kept"]
    assert report["kv_cells"] == report["text_tokens"] + report["kept_tokens"] + report["generated_tokens"]
    for key in ("encode_ms", "pass_ms", "prefill_ms", "ttft_ms"):
        assert report[key] > 0
    # the default (divprune at layer 0) reads the embeddings: no probe; a transport method at layer 2 probes
    assert (report["probe_ms"] > 0) == bool(flags), report["probe_ms"]
    assert report["n_ctx"] < report["text_tokens"] + report["image_tokens"] + 256 + 256 + 6  # sized after pruning


@pytest.mark.parametrize("family", FAMILIES)
def test_no_prune_answers_exactly_like_stock_llama_cpp_python(models_dir, picture, libs, family):
    r = subprocess.run([sys.executable, "-m", "topv_edge.chat", str(models_dir / f"{family}-tiny.gguf"), str(picture),
                        "--prompt", QUESTION, "--no-prune", "--max-tokens", "12", "--threads", "2"],
                       capture_output=True, timeout=120, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert r.returncode == 0, r.stderr
    ours = r.stdout.decode()[:-1]  # the answer, then one newline
    # llama-cpp-python's own multimodal handler (its stock path: TopV off), greedy
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import MTMDChatHandler

    llm = Llama(str(models_dir / f"{family}-tiny.gguf"), chat_handler=MTMDChatHandler(
        str(models_dir / f"mmproj-{family}-tiny.gguf"), verbose=False), n_ctx=1024, n_threads=2, verbose=False)
    out = llm.create_chat_completion(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": picture.as_uri()}}, {"type": "text", "text": QUESTION}]}],
        temperature=0.0, repeat_penalty=1.0, max_tokens=12, seed=0)
    llm.close()
    theirs = out["choices"][0]["message"]["content"]
    # the chat shows the answer from its first letter (SentencePiece pieces start with a space)
    theirs = theirs.lstrip()
    # llama-cpp-python generates past max_tokens while its text ends in what looks like an incomplete UTF-8
    # sequence (its "multibyte fix" skips the length check): the random llava model here gets 13 completion
    # tokens for 12. Then our 12 tokens must be the start of its answer.
    assert ours == theirs or (out["usage"]["completion_tokens"] > 12 and theirs.startswith(ours) and ours)


def test_repl_through_stdin(models_dir, picture, libs):
    script = f"/stats\n{QUESTION}\n/stats\n/image {picture}\nAnd now?\n/reset\nHello\n/quit\n"
    r = chat(str(models_dir / "llava-tiny.gguf"), str(picture), "--max-tokens", "4", "--json", stdin=script)
    assert r.returncode == 0, r.stderr
    reports = [json.loads(line) for line in r.stdout.splitlines()]  # --json: stdout holds nothing else
    assert [len(rep["images"]) for rep in reports] == [1, 1, 0]
    assert "no turn yet" in r.stderr and "KV cells" in r.stderr
    assert "conversation cleared" in r.stderr
    assert reports[1]["kv_cells"] > reports[0]["kv_cells"]  # the second turn adds to the same cache
    assert reports[2]["kv_cells"] < reports[1]["kv_cells"]  # after /reset


def handler_request(models_dir, picture, n_ubatch: int, **handler_args):
    import topv_edge
    from llama_cpp import Llama

    handler = topv_edge.TopVChatHandler(models_dir / "mmproj-llava-tiny.gguf", **handler_args)
    llm = Llama(str(models_dir / "llava-tiny.gguf"), chat_handler=handler, n_ctx=1024, n_batch=n_ubatch,
                n_ubatch=n_ubatch, n_threads=2, verbose=False)
    try:
        out = llm.create_chat_completion(messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": str(picture)}},
            {"type": "image_url", "image_url": {"url": str(picture)}}, {"type": "text", "text": QUESTION}]}],
            temperature=0.0, max_tokens=4)
    finally:
        llm.close()
    assert isinstance(out["choices"][0]["message"]["content"], str)
    return handler.last_image_reports()


def test_handler_prunes_in_create_chat_completion(models_dir, picture, libs):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a pruned request warns about nothing
        reports = handler_request(models_dir, picture, 512, keep=0.25, layer=2, method="uniform")
    assert len(reports) == 2
    for report in reports:
        assert report.pruned and (report.n_tokens, report.n_kept) == (64, 16) and report.note == ""
        assert 0 < report.encode_ms < 60_000 and report.probe_ms > 0  # measured, not nan


def test_handler_warns_when_an_image_is_decoded_unpruned(models_dir, picture, libs):
    from topv_edge.handler import TopVFallbackWarning

    with pytest.warns(TopVFallbackWarning, match=r"image of 64 tokens decoded unpruned: .*n_ubatch.*"
                                                 r"give Llama\(n_batch=\.\.\., n_ubatch=\.\.\.\) of at least 64"):
        (first, second) = handler_request(models_dir, picture, 32, keep=0.25, layer=2, method="topv")  # it probes
    assert not first.pruned and first.n_kept == 64 and "n_ubatch" in first.note and first.encode_ms > 0


def test_handler_without_a_probe_prunes_with_a_small_batch(models_dir, picture, libs):
    import warnings

    from topv_edge.handler import TopVFallbackWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", TopVFallbackWarning)
        (first, second) = handler_request(models_dir, picture, 32, keep=0.25)  # the default: no probe
    assert first.pruned and second.pruned and first.n_kept == 16


def test_handler_refuses_bad_options_at_once(models_dir, libs):
    import topv_edge

    # the library's words: its parameters' names, never the command line's flags
    for kwargs, message in (({"keep": 0}, "keep count must be at least 1"), ({"method": "fastv"}, "method must be one of"),
                            ({"threads": 0}, "threads must be"), ({"layer": -1}, "layer must be a whole number")):
        with pytest.raises(ValueError, match=message) as e:
            topv_edge.TopVChatHandler(models_dir / "mmproj-llava-tiny.gguf", **kwargs)
        assert "--" not in str(e.value)


def test_errors_are_plain_messages_with_exit_code_2(models_dir, picture, tmp_path, libs):
    lonely = tmp_path / "lonely.gguf"
    lonely.write_bytes((models_dir / "llava-tiny.gguf").read_bytes())
    not_image = tmp_path / "notes.png"
    not_image.write_text("not a picture")
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_text("hello")
    model = str(models_dir / "llava-tiny.gguf")
    cases = [
        ((str(tmp_path / "missing.gguf"), str(picture), "-p", "x"), "model not found"),
        ((str(lonely), str(picture), "-p", "x"), "no mmproj found"),
        ((str(not_gguf), str(picture), "-p", "x"), "is not a GGUF file"),
        ((model, str(not_image), "-p", "x"), "is not an image"),
        ((model, str(tmp_path / "nope.jpg"), "-p", "x"), "image not found"),
        ((model, str(picture), "-p", "x", "--keep", "1.5"), "ratio must be in (0, 1]"),
        ((model, str(picture), "-p", "x", "--keep", "0"), "at least 1"),
        ((model, str(picture), "-p", "x", "--layer", "9"), "--layer must be 0..2"),
        ((str(models_dir / "qwen2vl-tiny.gguf"), str(picture), str(picture), "-p", "x", "--no-prune", "--ctx", "64"),
         "--ctx 256 is too small"),  # llama.cpp rounds n_ctx up to 256; two unpruned images need 288 cells
        ((model, str(picture), "-p", "x", "--topv", "gamma"), "NAME=VALUE"),
        ((model, str(picture), "-p", "x", "--mmproj", str(models_dir / "mmproj-qwen2vl-tiny.gguf")), "does not match"),
    ]
    for args, message in cases:
        r = chat(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert message in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr, (args, r.stderr)


def test_handler_load_errors_say_why(models_dir, libs):
    import topv_edge
    from llama_cpp import Llama

    handler = topv_edge.TopVChatHandler(models_dir / "mmproj-llava-tiny.gguf")  # 128 wide; the demo model takes 256
    llm = Llama(str(DEMO_MODEL), chat_handler=handler, n_ctx=512, n_threads=2, verbose=False)
    try:
        with pytest.raises(ValueError, match=r"does not belong to the model demo-vlm\.gguf.*n_embd = 256"):
            llm.create_chat_completion(messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    finally:
        llm.close()


def _mapped(pid: int, name: str) -> bool:
    try:
        return name in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.parametrize("stage", ["numpy", "libllama"], ids=["importing", "loading"])
def test_ctrl_c_at_start_up_exits_130_quietly(libs, stage):
    """SIGINT while the modules import (numpy mapped, the model not yet) or while llama.cpp loads: exit 130, no
    traceback. Each stage is waited for by what /proc shows, not by a sleep."""
    import signal
    import time

    if not Path("/proc/self/maps").exists():
        pytest.skip("needs /proc/PID/maps to see the start-up stage")
    proc = subprocess.Popen([sys.executable, "-m", "topv_edge.chat", "--demo", "-p", "How many shapes are there?"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    try:
        deadline = time.monotonic() + 120
        while not _mapped(proc.pid, stage) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        assert proc.poll() is None, "the chat finished before the stage was seen"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
