"""The llama.cpp patch end to end, on real llama.cpp with the project's tiny generated models.

Each test drives the patched libraries through topv_edge.VisionChat (llama-cpp-python's
low-level bindings) or runs the patched llama-mtmd-cli / llama-server binaries.
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import numpy as np
import pytest

import topv_edge
from topv_edge.options import TopVOptions
from topv_edge.session import VisionChat

from helpers.families import FAMILIES
from helpers.server import LlamaServer, binary
from helpers.stage import QUESTION, allow_position_gaps, decode_text_chunk


def session(models_dir: Path, family: str, **topv) -> VisionChat:
    return VisionChat(models_dir / f"{family}-tiny.gguf", topv=TopVOptions(**topv), threads=2, max_tokens=8)


@pytest.mark.parametrize("family", FAMILIES)
def test_keep_all_is_bit_identical_to_pruning_off(models_dir, picture, libs, family):
    results = []
    for topv in ({"enabled": False}, {"keep": 1.0}):
        with session(models_dir, family, **topv) as chat:
            chat.add_user_message(QUESTION, [picture])
            logits = chat.logits()
            answer, _ = chat.ask("And the colours?")
            results.append((logits, answer, chat.kv_cell_positions()))
    (l0, a0, p0), (l1, a1, p1) = results
    assert np.array_equal(l0, l1)
    assert a0 == a1
    assert np.array_equal(p0, p1)


@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_cache_holds_text_and_kept_tokens_at_original_positions(models_dir, picture, libs, family):
    with session(models_dir, family, enabled=False) as chat:
        chat.add_user_message(QUESTION, [picture])
        full_positions = chat.kv_cell_positions()
        full_n_past = chat.n_past
    with session(models_dir, family, keep=0.25) as chat:
        images, n_text, _ = chat.add_user_message(QUESTION, [picture])
        positions = chat.kv_cell_positions()
        kept = libs.topv_kept(chat.mctx)
        n_past = chat.n_past
    (im,) = images
    assert im.pruned and im.n_kept == round(0.25 * im.n_tokens) == len(kept)
    assert len(positions) == n_text + im.n_kept == chat.kv_cells           # KV cells = text + kept
    assert n_past == full_n_past                                           # text after the image: same positions
    assert set(positions) <= set(full_positions)                           # nothing renumbered
    if family == "llava":  # ordinary RoPE: image token i sits at image_start + i; the pruned ones are missing
        pruned_idx = np.setdiff1d(np.arange(im.n_tokens), kept)
        image_start = min(set(full_positions) - set(positions)) - pruned_idx[0]
        assert np.array_equal(full_positions, np.arange(full_n_past))
        assert set(positions) == set(full_positions) - set(image_start + pruned_idx)


@pytest.mark.parametrize("family", FAMILIES)
def test_kept_set_is_what_select_returns_on_the_probed_features(models_dir, picture, libs, family):
    with session(models_dir, family, keep=0.25, layer=2) as chat:
        (im,), _, _ = chat.add_user_message(QUESTION, [picture])
        source = libs.topv_features(chat.mctx, target=False)
        target = libs.topv_features(chat.mctx, target=True)
        kept = libs.topv_kept(chat.mctx)
        scores = libs.topv_scores(chat.mctx)
        st = libs.topv_stats(chat.mctx)
        n_embd = chat.llama.llama_model_n_embd(chat.model)  # while the model is loaded (ASan found it read after)
    assert source.shape == target.shape == (im.n_tokens, n_embd)
    assert np.all(np.isfinite(source)) and not np.array_equal(source, target)
    idx, ref_scores = topv_edge.select(source, target, grid=(st.grid_w, st.grid_h), keep=0.25)
    assert np.array_equal(kept, idx)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-12)
    # and the same on the Numba reference, within the parity tolerance of the pass's tests
    idx_ref, _ = topv_edge.select(source, target, grid=(st.grid_w, st.grid_h), keep=0.25, backend="numba")
    assert np.array_equal(kept, idx_ref)


def test_pruned_logits_equal_a_manual_decode_of_the_kept_tokens_at_their_positions(models_dir, picture, libs):
    """The stage's output = decoding the kept embeddings by hand at n_past + index (and != renumbered);
    its diagnostic mode renumber_positions = decoding them by hand at consecutive positions."""
    stage = {}
    for mode in ("original", "renumbered"):
        with session(models_dir, "llava", keep=0.25, renumber_positions=(mode == "renumbered")) as chat:
            chat.add_user_message(QUESTION, [picture])
            stage[mode] = chat.logits()
            kept = libs.topv_kept(chat.mctx)
            if mode == "renumbered":  # text follows right after the kept tokens
                positions = sorted(int(p) for p in chat.kv_cell_positions())
                assert positions == list(range(len(positions))) and chat.n_past == len(positions)
    manual = {}
    for mode in ("original", "renumbered"):
        with session(models_dir, "llava", enabled=False) as chat:
            manual[mode] = manual_prefill(chat, picture, kept, renumber=(mode == "renumbered"))
    np.testing.assert_allclose(manual["original"], stage["original"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(manual["renumbered"], stage["renumbered"], rtol=1e-5, atol=1e-5)
    assert not np.allclose(manual["renumbered"], stage["original"], rtol=1e-3, atol=1e-3)


def manual_prefill(chat: VisionChat, picture: Path, kept: np.ndarray, renumber: bool) -> np.ndarray:
    """Prefill with llama_decode directly: text chunks, then only `kept` image embeddings, then text."""
    import ctypes

    L, M = chat.llama, chat.mtmd
    from topv_edge.session.files import read_image

    content = [{"type": "text", "text": chat.marker}, {"type": "text", "text": QUESTION}]
    chunks = chat._tokenize(chat._render([{"role": "user", "content": content}]), [read_image(picture)])
    chat._create_context(256, 512)
    allow_position_gaps(chat)
    n_past, shift = 0, 0
    n_embd = L.llama_model_n_embd(chat.model)
    for i in range(M.mtmd_input_chunks_size(chunks)):
        chunk = M.mtmd_input_chunks_get(chunks, i)
        if M.mtmd_input_chunk_get_type(chunk) == M.MTMD_INPUT_CHUNK_TYPE_TEXT:
            n_past += decode_text_chunk(chat, chunk, n_past - shift)
        else:
            n_img = M.mtmd_input_chunk_get_n_tokens(chunk)
            assert M.mtmd_encode_chunk(chat.mctx, chunk) == 0
            embd = np.ctypeslib.as_array(M.mtmd_get_output_embd(chat.mctx), (n_img, n_embd)).copy()
            batch = L.llama_batch_init(len(kept), n_embd, 1)
            flat = np.ascontiguousarray(embd[kept]).ravel()
            ctypes.memmove(batch.embd, flat.ctypes.data, flat.nbytes)
            for j, k in enumerate(kept):
                batch.pos[j] = n_past + (j if renumber else int(k))
                batch.n_seq_id[j], batch.logits[j] = 1, 0
                batch.seq_id[j][0] = 0
            batch.n_tokens = len(kept)
            assert L.llama_decode(chat.ctx, batch) == 0
            L.llama_batch_free(batch)
            n_past += n_img
            if renumber:
                shift = n_img - len(kept)
    M.mtmd_input_chunks_free(chunks)
    return chat.logits()


# --- the patched binaries ------------------------------------------------------------------------


def run_cli(libs, models_dir, picture, *flags, timeout=120):
    cmd = [binary(libs, "llama-mtmd-cli"), "-m", str(models_dir / "llava-tiny.gguf"),
           "--mmproj", str(models_dir / "mmproj-llava-tiny.gguf"), "--image", str(picture),
           "-p", QUESTION, "-n", "4", "--temp", "0", "-t", "2", *flags]
    return subprocess.run(cmd, capture_output=True, timeout=timeout)


def test_mtmd_cli_prunes_and_logs_a_line_per_image(models_dir, picture, libs):
    r = run_cli(libs, models_dir, picture, "--topv-keep", "0.25", "--topv-layer", "2")
    out = (r.stdout + r.stderr).decode("utf-8", "replace")
    assert r.returncode == 0, out[-2000:]
    assert "topv: image 8x8: 64 tokens -> 16 kept (layer 2)" in out
    assert "failed" not in out


def test_mtmd_cli_without_layer_or_method_flags_uses_the_stages_defaults(models_dir, picture, libs):
    """What the command lines do without --topv-layer / --topv-method is what the Python side does."""
    from topv_edge.options import DEFAULT_LAYER
    from topv_edge.pruning import default_method

    r = run_cli(libs, models_dir, picture, "--topv-keep", "0.25")
    out = (r.stdout + r.stderr).decode("utf-8", "replace")
    assert r.returncode == 0, out[-2000:]
    assert f"-> 16 kept (layer {DEFAULT_LAYER}), probe 0.0 ms" in out  # divprune at layer 0: no probe
    help_text = subprocess.run([binary(libs, "llama-mtmd-cli"), "--help"], capture_output=True, timeout=60)
    assert f"{default_method()} (the default" in (help_text.stdout + help_text.stderr).decode()


@pytest.mark.parametrize("flags, message", [
    (["--topv-keep", "0"], "at least 1"),
    (["--topv-keep", "1.5"], "ratio in (0, 1]"),
    (["--topv-keep", "abc"], "ratio in (0, 1]"),
    (["--topv-keep", "-0.5"], "ratio in (0, 1]"),
    (["--topv-layer", "-1"], "--topv-layer must be >= 0"),
    # the model's depth is known once it loads: a layer it does not have ends the program there, not silently later
    (["--topv-keep", "0.25", "--topv-layer", "40"], "topv: layer 40 is out of range: this model has 4 layers"),
    (["--topv-keep", "0.25", "--topv-method", "nope"], "unknown method 'nope' (known: topv,"),
])
def test_mtmd_cli_rejects_bad_flags_cleanly(models_dir, picture, libs, flags, message):
    r = run_cli(libs, models_dir, picture, *flags)
    out = (r.stdout + r.stderr).decode("utf-8", "replace")
    assert r.returncode > 0, out[-2000:]  # an error exit, not a signal
    assert message in out


@pytest.mark.parametrize("flags, reason", [
    # a probing method (the default, divprune at layer 0, has no probe and so needs no whole-image batch)
    (["--topv-keep", "0.25", "--topv-layer", "2", "--topv-method", "topv", "-b", "32", "-ub", "32"],
     "the image has 64 tokens, more than n_batch 32 / n_ubatch 32"),
])
def test_mtmd_cli_falls_back_to_unpruned_with_a_warning(models_dir, picture, libs, flags, reason):
    r = run_cli(libs, models_dir, picture, *flags)
    out = (r.stdout + r.stderr).decode("utf-8", "replace")
    assert r.returncode == 0, out[-2000:]
    assert "decoded unpruned" in out and reason in out


def test_llama_server_answers_an_image_request_with_pruning(models_dir, picture, libs, tmp_path):
    uri = "data:image/png;base64," + base64.b64encode(picture.read_bytes()).decode()
    with LlamaServer(libs, models_dir / "llava-tiny.gguf", models_dir / "mmproj-llava-tiny.gguf",
                     tmp_path / "server.log", "--topv-keep", "0.25", n_ctx=1024) as server:
        status, reply = server.chat([{"type": "image_url", "image_url": {"url": uri}},
                                     {"type": "text", "text": QUESTION}], max_tokens=4)
        log = server.log()
    assert status == 200 and reply["choices"][0]["message"]["content"] is not None, reply
    assert reply["usage"]["prompt_tokens"] > 64
    assert "topv: image 8x8: 64 tokens -> 16 kept" in log


def test_pruned_logits_match_a_float64_reference_forward_at_the_original_positions(models_dir, picture, libs):
    """llama.cpp with position gaps is exact: the pruned prefill equals a numpy float64 forward of the same
    tokens (text + kept image embeddings) at their original positions."""
    import ctypes

    from helpers.llama_reference import LlamaReference
    from topv_edge.session.files import read_image

    ref = LlamaReference(models_dir / "llava-tiny.gguf")
    with session(models_dir, "llava", keep=0.25) as chat:
        chat.add_user_message(QUESTION, [picture])
        pruned = chat.logits().astype(np.float64)
        kept = libs.topv_kept(chat.mctx)
        # the same prompt's pieces: text token ids and the image's embeddings
        chat.reset()  # tokenise as a first turn (with BOS), as the prompt above was
        M = chat.mtmd
        content = [{"type": "text", "text": chat.marker}, {"type": "text", "text": QUESTION}]
        chunks = chat._tokenize(chat._render([{"role": "user", "content": content}]), [read_image(picture)])
        xs, ps, n_past = [], [], 0
        for i in range(M.mtmd_input_chunks_size(chunks)):
            chunk = M.mtmd_input_chunks_get(chunks, i)
            if M.mtmd_input_chunk_get_type(chunk) == M.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t()
                toks = M.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                xs.append(ref.embed([toks[j] for j in range(n.value)]))
                ps.append(n_past + np.arange(n.value))
                n_past += n.value
            else:
                n_img = M.mtmd_input_chunk_get_n_tokens(chunk)
                assert M.mtmd_encode_chunk(chat.mctx, chunk) == 0
                embd = np.ctypeslib.as_array(M.mtmd_get_output_embd(chat.mctx), (n_img, ref.n_embd))
                xs.append(embd[kept].astype(np.float64))
                ps.append(n_past + kept)
                n_past += n_img
        M.mtmd_input_chunks_free(chunks)
    logits = ref.forward(np.concatenate(xs), np.concatenate(ps).astype(np.float64))[-1]
    # llama.cpp keeps K and V in f16: agreement to ~1e-3 of the logits' spread
    assert np.max(np.abs(logits - pruned)) < 5e-3 * np.std(logits), np.max(np.abs(logits - pruned))
    renumbered = ref.forward(np.concatenate(xs), np.arange(sum(len(p) for p in ps), dtype=np.float64))[-1]
    assert np.max(np.abs(renumbered - pruned)) > 20 * np.max(np.abs(logits - pruned))


def test_the_python_defaults_are_the_stages(libs):
    """chat, handler, eval and viz default to what llama-mtmd-cli and llama-server do without flags."""
    from topv_edge.options import DEFAULT_KEEP, DEFAULT_LAYER, DEFAULT_OVERVIEW_WEIGHT
    from topv_edge.pruning import default_method

    p = libs.topv_default_params()
    assert p.layer == DEFAULT_LAYER
    assert p.keep_ratio == pytest.approx(DEFAULT_KEEP) and p.overview_weight == pytest.approx(DEFAULT_OVERVIEW_WEIGHT)
    assert p.pass_params.method == topv_edge.METHODS[default_method()]
