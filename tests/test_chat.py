"""`python -m topv_edge.chat` and `TopVChatHandler` end to end on the tiny generated models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import FAMILIES

QUESTION = "What is in the picture?"


def chat(*args: str, stdin: str | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "topv_edge.chat", *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})


@pytest.mark.parametrize("family", FAMILIES)
def test_one_shot_json_report_is_consistent(models_dir, picture, libs, family):
    r = chat(str(models_dir / f"{family}-tiny.gguf"), str(picture), "--prompt", QUESTION, "--keep", "0.25",
             "--json", "--max-tokens", "6", "--threads", "2")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    (image,) = report["images"]
    assert image["pruned"] and report["kept_tokens"] == round(0.25 * report["image_tokens"]) == image["n_kept"]
    assert report["kv_cells"] == report["text_tokens"] + report["kept_tokens"] + report["generated_tokens"]
    for key in ("encode_ms", "probe_ms", "pass_ms", "prefill_ms", "ttft_ms"):
        assert report[key] > 0
    assert report["n_ctx"] < report["text_tokens"] + report["image_tokens"] + 256 + 256 + 6  # sized after pruning


@pytest.mark.parametrize("family", FAMILIES)
def test_no_prune_answers_exactly_like_stock_llama_cpp_python(models_dir, picture, libs, family):
    r = subprocess.run([sys.executable, "-m", "topv_edge.chat", str(models_dir / f"{family}-tiny.gguf"), str(picture),
                        "--prompt", QUESTION, "--no-prune", "--max-tokens", "12", "--threads", "2"],
                       capture_output=True, timeout=120, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
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
    # llama-cpp-python generates past max_tokens while its text ends in what looks like an incomplete UTF-8
    # sequence (its "multibyte fix" skips the length check): the random llava model here gets 13 completion
    # tokens for 12. Then our 12 tokens must be the start of its answer.
    assert ours == theirs or (out["usage"]["completion_tokens"] > 12 and theirs.startswith(ours) and ours)


def test_repl_through_stdin(models_dir, picture, libs):
    script = f"/stats\n{QUESTION}\n/stats\n/image {picture}\nAnd now?\n/reset\nHello\n/quit\n"
    r = chat(str(models_dir / "llava-tiny.gguf"), str(picture), "--max-tokens", "4", "--json", stdin=script)
    assert r.returncode == 0, r.stderr
    reports = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert [len(rep["images"]) for rep in reports] == [1, 1, 0]
    assert "no turn yet" in r.stdout and "KV cells" in r.stdout
    assert "conversation cleared" in r.stderr
    assert reports[1]["kv_cells"] > reports[0]["kv_cells"]  # the second turn adds to the same cache
    assert reports[2]["kv_cells"] < reports[1]["kv_cells"]  # after /reset


def test_handler_prunes_in_create_chat_completion(models_dir, picture, libs):
    import topv_edge
    from llama_cpp import Llama

    handler = topv_edge.TopVChatHandler(models_dir / "mmproj-llava-tiny.gguf", keep=0.25, layer=2)
    llm = Llama(str(models_dir / "llava-tiny.gguf"), chat_handler=handler, n_ctx=1024, n_batch=512, n_ubatch=512,
                n_threads=2, verbose=False)
    out = llm.create_chat_completion(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": str(picture)}}, {"type": "text", "text": QUESTION}]}],
        temperature=0.0, max_tokens=4)
    assert isinstance(out["choices"][0]["message"]["content"], str)
    report = handler.last_image_report()
    llm.close()
    assert report is not None and report.pruned and (report.n_tokens, report.n_kept) == (64, 16)


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
        ((model, str(picture), "-p", "x", "--layer", "9"), "beyond the model's depth"),
        ((str(models_dir / "qwen2vl-tiny.gguf"), str(picture), str(picture), "-p", "x", "--no-prune", "--ctx", "64"),
         "larger --ctx"),  # llama.cpp rounds n_ctx up to 256; two unpruned images need 288 cells
        ((model, str(picture), "-p", "x", "--topv", "gamma"), "NAME=VALUE"),
        ((model, str(picture), "-p", "x", "--mmproj", str(models_dir / "mmproj-qwen2vl-tiny.gguf")), "does not match"),
    ]
    for args, message in cases:
        r = chat(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert message in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr, (args, r.stderr)


def test_viz_writes_pictures_of_the_image_size(models_dir, picture, tmp_path, libs):
    from PIL import Image

    out = tmp_path / "kept.png"
    r = subprocess.run([sys.executable, "-m", "topv_edge.viz", str(models_dir / "llava-tiny.gguf"), str(picture),
                        "-o", str(out), "--keep", "16"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert r.returncode == 0, r.stderr
    assert "16 of 64 tokens kept on a 8x8 grid" in r.stdout
    with Image.open(picture) as src, Image.open(out) as kept, Image.open(tmp_path / "kept-scores.png") as heat:
        assert kept.size == heat.size == src.size
        # kept cells keep their pixels, pruned ones are dimmed: some pixels equal, most differ
        a, b = np.asarray(src.convert("RGB")), np.asarray(kept.convert("RGB"))
        same = np.all(a == b, axis=-1).mean()
        assert 0.05 < same < 0.5
