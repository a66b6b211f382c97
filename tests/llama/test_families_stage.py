"""The TopV stage prunes every single-picture family the generator writes, correctly, on real llama.cpp.

Per family, on its tiny generated pair (topv_edge.lab.synth; docs/families.md): keep = 1.0 is bit-identical to
pruning off; at keep = 0.25 the memory holds exactly the text and the kept tokens at their original positions
(M-RoPE / IM-RoPE: the original (t, y, x)), the text after the image sits where it would unpruned, structural
embeddings inside the chunk (Pixtral's [IMG_BREAK]) are all kept, the kept set is `topv_edge.select` on the probed
features, and the logits equal a decode by hand of only the kept rows (whole deepstack rows for Qwen3-VL) at their
original positions. For the hybrid Qwen3.5 the recurrent state after the pruned image equals the state after a
decode of the kept tokens alone. `python -m topv_edge.chat --json` reports every image pruned.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import topv_edge
from topv_edge.options import TopVOptions
from topv_edge.session import VisionChat
from topv_edge.lab.synth import demo_image, image_layout, pair_paths, preset_config

from helpers.stage import (QUESTION, image_positions, manual_prefill, memory_cells,
                           prompt_chunks, recurrent_state)

# "llava-cls": LLaVA-1.5's real tower, with a class embedding (pruned once patches/10 puts the class token first)
FAMILIES = ("llava", "llava-cls", "gemma3", "gemma4", "qwen2vl", "qwen25vl", "qwen3vl", "qwen35", "pixtral")
MROPE = {"qwen2vl", "qwen25vl", "qwen3vl", "qwen35"}
# non-square pictures for the dynamic-grid families (the fixed-size ones resize to their square)
PICTURE_SIZE = {"pixtral": (192, 128)}
DEFAULT_SIZE = (336, 224)
KEEP = 0.25
# the probe's path (a transport method at layer 2: the probe runs, its cells and recurrent state are rolled back);
# the default (divprune at layer 0) runs no probe and has its own test below
PROBED = {"keep": KEEP, "layer": 2, "method": "topv"}


def pair(models_dir: Path, family: str) -> tuple[Path, Path]:
    base, cls = family.removesuffix("-cls"), family.endswith("-cls")
    return pair_paths(base, "tiny", models_dir, class_embedding=cls)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    out = tmp_path_factory.mktemp("family-pictures")
    paths = {}
    for size in {DEFAULT_SIZE, *PICTURE_SIZE.values()}:
        paths[size] = out / f"shapes-{size[0]}x{size[1]}.png"
        demo_image(size, seed=3).save(paths[size])
    return lambda family: paths[PICTURE_SIZE.get(family.removesuffix("-cls"), DEFAULT_SIZE)]


def session(models_dir: Path, family: str, **topv) -> VisionChat:
    model, mmproj = pair(models_dir, family)
    return VisionChat(model, mmproj, topv=TopVOptions(**topv), threads=2, max_tokens=4)


def structural_tokens(family: str, nx: int, ny: int) -> list[int]:
    """Chunk indices of the embeddings that are not grid cells: Pixtral's [IMG_BREAK] after every row but the last."""
    if family == "pixtral":
        return [y * (nx + 1) + nx for y in range(ny - 1)]
    return []


def expected_grid(family: str, picture: Path) -> tuple[int, int]:
    """The token grid the picture must give, from the generator's own account of llama.cpp's resizing."""
    from PIL import Image

    vcfg = preset_config(family.removesuffix("-cls"), "tiny").vision
    lay = image_layout(vcfg, *Image.open(picture).size)
    return lay.nx, lay.ny


def image_chunk_facts(chat: VisionChat, picture: Path) -> dict:
    """Where the image sits in the prompt: text tokens before it, its token count, grid and mtmd positions."""
    M = chat.mtmd
    chunks = prompt_chunks(chat, picture)
    try:
        n_past = 0
        for i in range(M.mtmd_input_chunks_size(chunks)):
            c = M.mtmd_input_chunks_get(chunks, i)
            if M.mtmd_input_chunk_get_type(c) == M.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                n = M.mtmd_input_chunk_get_n_tokens(c)
                it = M.mtmd_input_chunk_get_tokens_image(c)
                return dict(n_before=n_past, n_tokens=n, positions=image_positions(chat, c, n_past, n),
                            nx=M.mtmd_image_tokens_get_nx(it), ny=M.mtmd_image_tokens_get_ny(it))
            n_past += M.mtmd_input_chunk_get_n_pos(c)
    finally:
        M.mtmd_input_chunks_free(chunks)
    raise AssertionError("no image chunk")


# --- the tests ---------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_keep_all_is_bit_identical_to_pruning_off(models_dir, pictures, libs, family):
    results = []
    for topv in ({"enabled": False}, {"keep": 1.0}):
        with session(models_dir, family, **topv) as chat:
            (im,), _, _ = chat.add_user_message(QUESTION, [pictures(family)])
            logits = chat.logits()
            answer, _ = chat.ask("And the colours?")
            results.append((im.pruned, logits, answer, memory_cells(chat)))
    (p0, l0, a0, c0), (p1, l1, a1, c1) = results
    assert not p0 and not p1
    assert np.array_equal(l0, l1)
    assert a0 == a1
    assert np.array_equal(c0, c1)


@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_memory_holds_text_and_kept_tokens_at_original_positions(models_dir, pictures, libs, family):
    picture = pictures(family)
    with session(models_dir, family, enabled=False) as chat:
        chat.add_user_message(QUESTION, [picture])
        full_cells, full_n_past = memory_cells(chat), chat.n_past
        facts = image_chunk_facts(chat, picture)
    with session(models_dir, family, **PROBED) as chat:
        (im,), n_text, _ = chat.add_user_message(QUESTION, [picture])
        cells, n_past = memory_cells(chat), chat.n_past
        kept = libs.topv_kept(chat.mctx)
        st = libs.topv_stats(chat.mctx)
    assert im.pruned, im.note
    n = facts["n_tokens"]
    w, h = expected_grid(family, picture)
    assert (st.grid_w, st.grid_h) == (w, h)
    special = structural_tokens(family, w, h)
    assert n == w * h + len(special) == st.n_tokens
    assert (st.n_grid, st.n_always_kept) == (w * h, len(special))
    assert set(special) <= set(kept.tolist())                               # structural embeddings: all kept
    assert len(kept) == st.n_kept == im.n_kept == round(KEEP * w * h) + len(special)
    assert np.all(np.diff(kept) > 0) and kept[0] >= 0 and kept[-1] < n
    assert n_past == full_n_past                                            # the text after: same positions
    # the memory: the unpruned one without the cells of the pruned image tokens, nothing renumbered
    assert len(cells) == n_text + len(kept) == chat.kv_cells
    pruned_pos = facts["positions"][np.setdiff1d(np.arange(n), kept)]
    full = {tuple(c) for c in full_cells.tolist()}
    assert len(full) == len(full_cells) == n_text + n
    assert {tuple(c) for c in pruned_pos.tolist()} <= full
    expected = sorted(full - {tuple(c) for c in pruned_pos.tolist()})
    assert [tuple(c) for c in cells.tolist()] == expected
    if family in MROPE:  # the kept image tokens at their own (t, y, x): rows and columns of the grid
        kept_pos = facts["positions"][kept]
        assert np.array_equal(kept_pos[:, 1] - facts["n_before"], kept // facts["nx"])
        assert np.array_equal(kept_pos[:, 2] - facts["n_before"], kept % facts["nx"])


@pytest.mark.parametrize("family", FAMILIES)
def test_kept_set_is_what_select_returns_on_the_probed_features(models_dir, pictures, libs, family):
    with session(models_dir, family, **PROBED) as chat:
        (im,), _, _ = chat.add_user_message(QUESTION, [pictures(family)])
        assert im.pruned, im.note
        source = libs.topv_features(chat.mctx, target=False)
        target = libs.topv_features(chat.mctx, target=True)
        kept = libs.topv_kept(chat.mctx)
        scores = libs.topv_scores(chat.mctx)
        st = libs.topv_stats(chat.mctx)
        n_embd = chat.llama.llama_model_n_embd(chat.model)
    special = structural_tokens(family, st.grid_w, st.grid_h)
    grid_tokens = np.setdiff1d(np.arange(st.n_tokens), special)          # grid cells in row-major order
    assert len(grid_tokens) == st.grid_w * st.grid_h
    assert source.shape == target.shape == (len(grid_tokens), n_embd) == (st.n_grid, st.n_embd)
    assert np.all(np.isfinite(source)) and np.all(np.isfinite(target)) and not np.array_equal(source, target)
    idx, ref_scores = topv_edge.select(source, target, grid=(st.grid_w, st.grid_h), keep=KEEP, method="topv")
    assert np.array_equal(kept, np.union1d(grid_tokens[idx], special))
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_logits_equal_a_manual_decode_of_the_kept_rows(models_dir, pictures, libs, family):
    """Deepstack (qwen3vl): the kept rows carry all their slices; hybrid (qwen35): the recurrent state after the
    pruned image is the state after a decode of the kept tokens alone (the probe left nothing behind)."""
    picture = pictures(family)
    with session(models_dir, family, **PROBED) as chat:
        (im,), _, _ = chat.add_user_message(QUESTION, [picture])
        assert im.pruned, im.note
        stage = chat.logits()
        kept = libs.topv_kept(chat.mctx)
        stage_state = recurrent_state(chat) if family == "qwen35" else None
    with session(models_dir, family, enabled=False) as chat:
        chat.add_user_message(QUESTION, [picture])
        full = chat.logits()
        full_state = recurrent_state(chat) if family == "qwen35" else None
    with session(models_dir, family, enabled=False) as chat:
        manual = manual_prefill(chat, picture, kept)
        manual_state = recurrent_state(chat) if family == "qwen35" else None
    np.testing.assert_allclose(stage, manual, rtol=1e-5, atol=1e-5)
    assert not np.allclose(stage, full, rtol=1e-3, atol=1e-3)  # pruning changed something: the check can fail
    if family == "qwen35":
        assert stage_state == manual_state
        assert stage_state != full_state


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("extreme", ["one token", "all but one"])
def test_keep_extremes_prune_to_exactly_that_many_tokens(models_dir, pictures, libs, family, extreme):
    """A count of 1 and of N - 1 grid tokens: the stage keeps exactly that many grid tokens (the structural
    ones besides), the memory holds text + kept, and the model answers from it (the sanitizer job runs this)."""
    picture = pictures(family)
    w, h = expected_grid(family, picture)
    count = 1 if extreme == "one token" else w * h - 1
    special = structural_tokens(family, w, h)
    with session(models_dir, family, keep=count) as chat:
        (im,), n_text, _ = chat.add_user_message(QUESTION, [picture])
        kept = libs.topv_kept(chat.mctx)
        cells = chat.kv_cells
        logits = chat.logits()
        answer, _ = chat.ask("And the colours?")
    assert im.pruned, im.note
    assert len(kept) == im.n_kept == count + len(special)
    assert set(special) <= set(kept.tolist())
    assert cells == n_text + len(kept)
    assert np.all(np.isfinite(logits))
    assert isinstance(answer, str)


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_0_without_a_target_runs_no_probe(models_dir, pictures, libs, family):
    """At layer 0 the source is the image embeddings; divprune reads nothing else, so the stage decodes the kept
    tokens without running the language model over the whole image first (no probe node, no probe time)."""
    picture = pictures(family)
    with session(models_dir, family, keep=KEEP, layer=0, method="divprune") as chat:
        (im,), n_text, _ = chat.add_user_message(QUESTION, [picture])
        st = libs.topv_stats(chat.mctx)
        kept = libs.topv_kept(chat.mctx)
        source = libs.topv_features(chat.mctx, target=False)
        target = libs.topv_features(chat.mctx, target=True)
        cells = chat.kv_cells
    assert im.pruned, im.note
    assert st.probe_max_layer == -1 and st.probe_ms == 0.0
    assert target is None and source.shape == (st.n_grid, st.n_embd)
    special = structural_tokens(family, st.grid_w, st.grid_h)
    grid_tokens = np.setdiff1d(np.arange(st.n_tokens), special)
    idx, _ = topv_edge.select(source, None, grid=(st.grid_w, st.grid_h), keep=KEEP, method="divprune")
    assert np.array_equal(kept, np.union1d(grid_tokens[idx], special))
    assert cells == n_text + len(kept)


class _GgmlTensor(ctypes.Structure):
    """The head of ggml.h's struct ggml_tensor, up to its name (GGML_MAX_DIMS 4, _OP_PARAMS 64, _SRC 10, _NAME 64)."""
    _fields_ = [("type", ctypes.c_int32), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4),
                ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int32), ("op_params", ctypes.c_int32 * 16),
                ("flags", ctypes.c_int32), ("src", ctypes.c_void_p * 10), ("view_src", ctypes.c_void_p),
                ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64)]


_EVAL_CB = ctypes.CFUNCTYPE(ctypes.c_bool, ctypes.POINTER(_GgmlTensor), ctypes.c_bool, ctypes.c_void_p)


def test_deepstack_probe_source_is_the_state_after_the_deepstack_add(models_dir, pictures, libs):
    """Qwen3-VL: the input of layer 1 is "deepstack_out-0" (layer 0's output plus deepstack slice 1), not "l_out-0".
    The nodes are captured from an unpruned decode through llama.cpp's eval callback (CPU: host memory)."""
    picture = pictures("qwen3vl")
    with session(models_dir, "qwen3vl", keep=KEEP, layer=1) as chat:
        (im,), _, _ = chat.add_user_message(QUESTION, [picture])
        assert im.pruned, im.note
        src1 = libs.topv_features(chat.mctx, target=False)
        n_img = libs.topv_stats(chat.mctx).n_tokens
    captured: dict[str, np.ndarray] = {}

    def cb(t, ask, _):
        name = t.contents.name.decode()
        if name not in ("l_out-0", "deepstack_out-0") or t.contents.ne[1] != n_img:
            return not ask  # ask: not needed; otherwise go on
        if ask:
            return True
        ne0, ne1 = t.contents.ne[0], t.contents.ne[1]
        buf = (ctypes.c_float * (ne0 * ne1)).from_address(t.contents.data)
        captured[name] = np.ctypeslib.as_array(buf).reshape(ne1, ne0).copy()
        return True

    callback = _EVAL_CB(cb)
    with session(models_dir, "qwen3vl", enabled=False) as chat:
        chat._create_context(256, 512)
        fn = chat.llama.llama_cpp._lib.llama_set_eval_callback
        fn.argtypes, fn.restype = [ctypes.c_void_p, _EVAL_CB, ctypes.c_void_p], None
        fn(chat.ctx, callback, None)
        chat.add_user_message(QUESTION, [picture])
        fn(chat.ctx, _EVAL_CB(), None)
        n_embd = chat.llama.llama_model_n_embd(chat.model)
    assert set(captured) == {"l_out-0", "deepstack_out-0"}
    assert src1.shape == captured["deepstack_out-0"].shape == (n_img, n_embd)
    np.testing.assert_allclose(src1, captured["deepstack_out-0"], rtol=1e-5, atol=1e-5)
    assert not np.allclose(src1, captured["l_out-0"], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_json_reports_the_image_pruned(models_dir, pictures, libs, family):
    model, mmproj = pair(models_dir, family)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    out = subprocess.run([sys.executable, "-m", "topv_edge.chat", str(model), str(pictures(family)),
                          "--mmproj", str(mmproj), "--keep", "0.25", "--json", "-p", QUESTION, "--threads", "2",
                          "--max-tokens", "2"], capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    (image,) = report["images"]
    assert image["pruned"], image
    assert image["n_kept"] < image["n_tokens"]
