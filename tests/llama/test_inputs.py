"""Every input gets a clear answer (issue 15): load errors name their cause, flags are checked where they
are parsed with the real limits, no picture is lost or missing silently. On the real patched llama.cpp
with the tiny generated models and the demo model."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from topv_edge.cli import keep_arg as parse_keep
from topv_edge.demo import DEMO_MMPROJ, DEMO_MODEL, DEMO_PICTURE
from topv_edge.errors import ChatError
from topv_edge.options import TopVOptions
from topv_edge.session import VisionChat

ROOT = Path(__file__).parents[2]


def chat(*args: str, stdin: str | None = None, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "topv_edge.chat", *args], input=stdin, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def refused(r: subprocess.CompletedProcess, *messages: str) -> None:
    """Exit code 2, each message in stderr, and no traceback."""
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    for m in messages:
        assert m in r.stderr, r.stderr


# --- load errors: the cause, in a sentence, with llama.cpp's own error line -----------------------------

def test_load_errors_name_the_cause(models_dir, picture, tmp_path, libs):
    llava, mmproj = models_dir / "llava-tiny.gguf", models_dir / "mmproj-llava-tiny.gguf"
    short_mmproj, short_model = tmp_path / "mmproj-short.gguf", tmp_path / "short.gguf"
    short_mmproj.write_bytes(mmproj.read_bytes()[: mmproj.stat().st_size // 2])
    short_model.write_bytes(llava.read_bytes()[: llava.stat().st_size * 2 // 3])
    cases = [  # (model, mmproj, extra flags), what the user must read
        ((mmproj, llava), ["model and --mmproj are swapped", "CLIP cannot be used as main model"]),
        ((DEMO_MODEL, mmproj), ["does not belong to the model demo-vlm.gguf", "another width",
                                "mismatch between text model (n_embd = 256) and mmproj (n_embd = 128)"]),
        ((llava, short_mmproj), ["could not load the mmproj", "truncated or damaged", "failed to seek"]),
        ((short_model, mmproj), ["could not load the model", "truncated or damaged"]),
        ((llava, models_dir / "qwen2vl-tiny.gguf"), ["is a text model (qwen2vl), not an mmproj"]),
        # a KV cache of 123 GB (larger contexts spend minutes in llama.cpp before they fail)
        ((DEMO_MODEL, DEMO_MMPROJ, "--ctx", "30000000"), ["not enough memory for a context of 30000000 tokens",
                                                          "--ctx of 30000000 tokens does not fit", "ask for a smaller one",
                                                          "failed to allocate"]),
    ]
    for (model, proj, *flags), messages in cases:
        r = chat(str(model), str(picture), "--mmproj", str(proj), *flags, "-p", "x", "--max-tokens", "1",
                 "--threads", "2")
        refused(r, *messages)
        assert "llama.cpp" in r.stderr  # llama.cpp's own line comes with the sentence
        assert "print_info" not in r.stderr and "warmup" not in r.stderr and "buffer size" not in r.stderr


def test_every_llama_cpp_error_line_reaches_the_explanation(libs):
    from topv_edge.errors import explain_llama_error

    # the first recognised cause wins over lines logged after it, unknown errors are quoted as they are
    lines = ["llama_model_load: error loading model: CLIP cannot be used as main model", "later noise"]
    assert "swapped" in explain_llama_error(lines, path="m.gguf")
    assert explain_llama_error(["something new"]) == "llama.cpp said: something new"
    assert "without an error message" in explain_llama_error([])


# --- the family check: the stage's layout table, for every family --------------------------------------

def test_an_mmproj_of_another_family_is_refused(models_dir, picture, libs):
    assert hasattr(libs.mtmd_cpp._libmtmd, "mtmd_topv_check_model"), \
        "the patched libmtmd lacks mtmd_topv_check_model (native/mtmd): rebuild with scripts/build_llama_cpp.sh"
    pairs = [("llava", "gemma3"), ("gemma3", "llava"), ("llava", "qwen2vl"), ("qwen2vl", "llava"),
             ("gemma3", "qwen2vl")]
    for model, proj in pairs:
        r = chat(str(models_dir / f"{model}-tiny.gguf"), str(picture), "--mmproj",
                 str(models_dir / f"mmproj-{proj}-tiny.gguf"), "-p", "x", "--max-tokens", "1", "--threads", "2")
        if r.returncode == 2 and "does not belong" in r.stderr:
            continue  # llama.cpp's own width check caught it first: also refused, with its reason
        refused(r, f"the mmproj mmproj-{proj}-tiny.gguf does not match the model {model}-tiny.gguf")


# --- flags ---------------------------------------------------------------------------------------------

def test_keep_takes_a_ratio_a_percentage_or_a_count():
    assert parse_keep("0.25") == 0.25 and isinstance(parse_keep("0.25"), float)
    assert parse_keep("25%") == 0.25 and parse_keep("100%") == 1.0
    assert parse_keep("1") == 1 and isinstance(parse_keep("1"), int)       # a whole number is a count
    assert parse_keep("1.0") == 1.0 and isinstance(parse_keep("1.0"), float)  # ... and 1.0 keeps everything
    assert parse_keep("144") == 144
    for bad in ("0", "0.0", "1.5", "150%", "0%", "-3", "abc", "%"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_keep(bad)


def test_reports_say_ratio_and_count_and_why_nothing_was_pruned(models_dir, picture, libs):
    with VisionChat(models_dir / "llava-tiny.gguf", threads=2, max_tokens=2) as c:
        expected = [  # keep, (label, ratio, count, kept of 64, why not pruned); 1 and 1.0 differ
            (0.25, ("25%", 0.25, None, 16, "")),
            (1, ("1 token", None, 1, 1, "")),
            (1.0, ("100%", 1.0, None, 64, "covers all 64 tokens")),
            (100000, ("100000 tokens", None, 100000, 64, "covers all 64 tokens")),
        ]
        for keep, (label, ratio, count, kept, why) in expected:
            c.set_topv(TopVOptions(keep=keep))
            c.reset()
            _, report = c.ask("x", [picture])
            d = report.as_dict()
            assert (d["keep"], d["keep_ratio"], d["keep_count"], d["kept_tokens"]) == (label, ratio, count, kept), keep
            assert d["images"][0]["kept_fraction"] == kept / 64
            note = report.images[0].note
            assert (why in note and note) if why else note == "", (keep, note)


def test_options_may_come_between_the_files(models_dir, picture, libs):
    r = chat(str(models_dir / "llava-tiny.gguf"), "--mmproj", str(models_dir / "mmproj-llava-tiny.gguf"), str(picture),
             "--keep", "25%", "-p", "x", "--max-tokens", "2", "--threads", "2", "--json", "--method", "uniform")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.splitlines()[-1])
    assert report["method"] == "uniform" and report["keep_ratio"] == 0.25 and report["kept_tokens"] == 16


def test_flags_are_checked_with_the_real_limits(models_dir, picture, libs):
    model = str(models_dir / "llava-tiny.gguf")
    for flags, message in [
        (["--threads", "0"], "--threads: must be a whole number from 1 to 512"),
        (["--threads", "-1"], "--threads: must be a whole number from 1 to 512"),
        (["--threads", "1000"], "--threads: must be a whole number from 1 to 512"),
        (["--method", "fastv"], "invalid choice: 'fastv'"),
        (["--keep", "150%"], "--keep: ratio must be in (0, 1], got 1.5"),
        (["--layer", "3"], "--layer must be 0..2 for this model (4 layers"),  # 0..n_layer-2: the last layer is refused
        (["--max-tokens", "0"], "at least 1"),
    ]:
        refused(chat(model, str(picture), "-p", "x", *flags), message)


def test_a_small_ctx_never_turns_the_probe_off(libs):
    # --ctx 100 on a 144-token image: llama.cpp rounds the context up to 256 but caps the batch at 100; the
    # chat asks for a context whose batch holds the image, so the image is pruned
    r = chat(str(DEMO_MODEL), str(DEMO_PICTURE), "--mmproj", str(DEMO_MMPROJ), "--ctx", "100", "-p",
             "How many shapes are there?", "--max-tokens", "2", "--threads", "2", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.splitlines()[-1])
    assert report["images"][0]["pruned"] and report["kept_tokens"] == 36 and report["n_ctx"] == 256
    assert "not pruned" not in r.stderr and "n_ubatch" not in r.stderr


def test_a_later_larger_image_grows_the_context_and_is_pruned(models_dir, tmp_path, libs):
    # Qwen2-VL makes more tokens of a larger picture: the context made for the first image is too small for
    # the second one's probe; the conversation moves to a larger context instead of decoding it unpruned
    from topv_edge.lab.synth import demo_image

    small, large = tmp_path / "small.png", tmp_path / "large.png"
    demo_image((112, 112), seed=1).save(small)
    demo_image((672, 672), seed=2).save(large)  # 24 x 24 = 576 tokens > 512
    probing = TopVOptions(keep=0.25, layer=1, method="topv")  # without a probe no image needs a whole ubatch
    with VisionChat(models_dir / "qwen2vl-tiny.gguf", topv=probing, threads=2, max_tokens=2) as c:
        _, first = c.ask("x", [small])
        n_ubatch = c.n_ubatch
        _, second = c.ask("and this?", [large])
        # the turn evaluated the conversation again in the new context: both pictures, in order
        assert [im.n_tokens for im in second.images] == [first.images[0].n_tokens, 576]
        assert 576 > n_ubatch, "the test needs a second image larger than the first batch"
        assert all(im.pruned for im in first.images + second.images), [im.note for im in second.images]
        assert c.n_ubatch >= 576
        # both images are in the new cache: text + kept tokens of both + the answers
        assert c.kv_cells == second.kv_cells > second.text_tokens + sum(i.n_kept for i in second.images)


def test_without_a_probe_a_later_larger_image_needs_no_larger_batch(models_dir, tmp_path, libs):
    from topv_edge.lab.synth import demo_image

    small, large = tmp_path / "small.png", tmp_path / "large.png"
    demo_image((112, 112), seed=1).save(small)
    demo_image((672, 672), seed=2).save(large)  # 576 tokens, more than the first context's batch
    with VisionChat(models_dir / "qwen2vl-tiny.gguf", threads=2, max_tokens=2) as c:  # the default: no probe
        _, first = c.ask("x", [small])
        n_ubatch = c.n_ubatch
        _, second = c.ask("and this?", [large])
        assert [im.n_tokens for im in second.images] == [576] and second.images[0].pruned  # evaluated incrementally
        assert c.n_ubatch == n_ubatch < 576
        assert c.kv_cells == first.kv_cells + second.text_tokens + second.images[0].n_kept + second.generated_tokens


def test_a_failed_turn_leaves_the_conversation_as_it_was(models_dir, picture, libs, monkeypatch):
    import topv_edge.session.chat as runtime  # the module VisionChat looks decode_image up in

    with VisionChat(models_dir / "llava-tiny.gguf", threads=2, max_tokens=2) as c:
        c.ask("x", [picture])
        cells, n_past, positions = c.kv_cells, c.n_past, list(c.kv_cell_positions())
        # a failure in the middle of a prefill (here: after the real decode of the message's first picture)
        real, calls = runtime.decode_image, []

        def fail_on_second(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise ChatError("could not encode the image")
            return real(*args, **kwargs)

        monkeypatch.setattr(runtime, "decode_image", fail_on_second)
        with pytest.raises(ChatError, match="could not encode"):
            c.ask("two more", [picture, picture])
        monkeypatch.undo()
        assert (c.kv_cells, c.n_past, list(c.kv_cell_positions())) == (cells, n_past, positions)
        assert c.n_images == 1 and len(c.messages) == 2
        _, report = c.ask("and now?")  # the conversation goes on from where it was
        assert report.kv_cells == cells + report.text_tokens + report.generated_tokens


# --- pictures: none lost silently, none missing silently ------------------------------------------------

def test_a_prompt_without_a_picture_gets_a_note_once(models_dir, libs):
    r = chat(str(models_dir / "llava-tiny.gguf"), "-p", "x", "--max-tokens", "2", "--threads", "2")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("note: no picture in this conversation") == 1
    r = chat(str(models_dir / "llava-tiny.gguf"), "--max-tokens", "2", "--threads", "2", stdin="one\ntwo\n")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("note: no picture in this conversation") == 1


def test_repl_pictures_bad_ones_alone_are_dropped_quotes_and_home_work(models_dir, picture, tmp_path, libs):
    home = tmp_path / "home"
    (home / "my pictures").mkdir(parents=True)
    (home / "my pictures" / "a b.png").write_bytes(picture.read_bytes())
    (home / "notes.png").write_text("not a picture")
    script = ("/image ~/notes.png \"~/my pictures/a b.png\" /nowhere.png\n"
              "first\n"
              "/image '~/my pictures/a b.png'\n"
              "second\n"
              "/reset\n"
              "third\n")
    r = chat(str(models_dir / "llava-tiny.gguf"), str(picture), "--max-tokens", "2", "--threads", "2", "--json",
             stdin=script, env={"HOME": str(home), "TOPV_EDGE_LLAMA_DIR": str(libs.directory)})
    assert r.returncode == 0, r.stderr
    reports = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    # the command-line picture and the good /image go with the first message, the bad two are refused alone
    assert [len(rep["images"]) for rep in reports] == [2, 1, 0]
    assert f"not added: {home / 'notes.png'} is not an image" in r.stderr
    assert "not added: image not found: /nowhere.png" in r.stderr
    assert "conversation cleared: 2 message(s) and 3 picture(s) are gone" in r.stderr
    assert r.stderr.count("note: no picture in this conversation") == 1  # after /reset


def test_no_leading_space_in_answers(models_dir, picture, libs):
    for family in ("llava", "qwen2vl"):
        r = chat(str(models_dir / f"{family}-tiny.gguf"), str(picture), "-p", "x", "--max-tokens", "6",
                 "--threads", "2")
        assert r.returncode == 0, r.stderr
        assert r.stdout and not r.stdout[0].isspace(), repr(r.stdout)
