"""The TopV stage prunes every single-picture family the generator writes, correctly, on real llama.cpp.

Per family, on its tiny generated pair (topv_edge.synthetic; docs/families.md): keep = 1.0 is bit-identical to
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
from topv_edge.runtime import TopVOptions, VisionChat, read_image
from topv_edge.synthetic import demo_image, image_layout, pair_paths, preset_config

from test_llama_patch import QUESTION, allow_position_gaps, decode_text_chunk

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
LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY = 1


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


def memory_cells(chat: VisionChat) -> np.ndarray:
    """The KV cells of sequence 0 as rows (t, y, x), sorted; (p, p, p) for ordinary RoPE.

    llama_state_seq_get_data: magic, seq id, n_stream, cell count, then per cell pos, n_seq_id, [x, y, tok when
    the model uses M-RoPE], seq ids (src/llama-kv-cache.cpp state_write_meta; a hybrid memory writes its
    attention part first)."""
    L = chat.llama
    size = L.llama_state_seq_get_size(chat.ctx, 0)
    buf = (ctypes.c_uint8 * size)()
    L.llama_state_seq_get_data(chat.ctx, buf, size, 0)
    words = np.frombuffer(bytes(buf), dtype=np.uint8)[: (size // 4) * 4].view(np.int32)
    n = int(words[3])
    mrope = L.llama_model_rope_type(chat.model) in (8, 40)
    cells = words[4:4 + n * (6 if mrope else 3)].reshape(n, 6 if mrope else 3)
    assert np.all(cells[:, 1] == 1)  # one sequence per cell
    tyx = np.stack([cells[:, 0], cells[:, 3], cells[:, 2]] if mrope else [cells[:, 0]] * 3, axis=1)
    return tyx[np.lexsort(tyx.T[::-1])]


def recurrent_state(chat: VisionChat) -> bytes:
    """Sequence 0's recurrent part of the memory (llama_state_seq_get_data_ext, partial states only)."""
    L = chat.llama
    size = L.llama_state_seq_get_size_ext(chat.ctx, 0, LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY)
    buf = (ctypes.c_uint8 * size)()
    assert L.llama_state_seq_get_data_ext(chat.ctx, buf, size, 0, LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY) == size
    return bytes(buf)


class _DecoderPos(ctypes.Structure):
    _fields_ = [("t", ctypes.c_uint32), ("x", ctypes.c_uint32), ("y", ctypes.c_uint32), ("z", ctypes.c_uint32)]


def image_positions(chat: VisionChat, chunk, n_past: int, n: int) -> np.ndarray:
    """(t, y, x) of each of the chunk's n image tokens as mtmd numbers them (mtmd_image_tokens_get_decoder_pos)."""
    fn = chat.mtmd._libmtmd.mtmd_image_tokens_get_decoder_pos
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_size_t], _DecoderPos
    it = chat.mtmd.mtmd_input_chunk_get_tokens_image(chunk)
    pos = [fn(it, n_past, i) for i in range(n)]
    return np.array([(p.t, p.y, p.x) for p in pos], dtype=np.int32)


def prompt_chunks(chat: VisionChat, picture: Path):
    """The chunks of the prompt add_user_message(QUESTION, [picture]) evaluates as a first message (the cache is
    cleared: BOS is added at n_past 0 only)."""
    chat._clear_cache()
    content = [{"type": "text", "text": chat.marker}, {"type": "text", "text": QUESTION}]
    return chat._tokenize(chat._render([{"role": "user", "content": content}]), [read_image(picture)])


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


def manual_prefill(chat: VisionChat, picture: Path, kept: np.ndarray | list[np.ndarray],
                   states: list[bytes] | None = None) -> np.ndarray:
    """Prefill with llama_decode by hand: the text chunks, then only the `kept` rows of the image (whole rows,
    deepstack slices included) at their original positions (4 sections for M-RoPE), with the model's causal setting
    for images, then the text at the positions it has unpruned. Returns the next-token logits.

    A tiled picture (several image chunks, markers between them): `kept` is a list, the rows of each image chunk;
    `states` (a list) gets the recurrent state after each image chunk.
    The generalisation of test_llama_patch.manual_prefill to every family (its version is ordinary RoPE only)."""
    L, M = chat.llama, chat.mtmd
    assert chat.ctx is None, "a fresh session: the context is created here"
    per_chunk = kept if isinstance(kept, list) else [kept]
    chunks = prompt_chunks(chat, picture)
    plan = chat._plan(chunks)
    chat._create_context(chat._cells(plan)[1], chat._max_image(plan))
    allow_position_gaps(chat)
    width = L.llama_model_n_embd_inp(chat.model)
    try:
        n_past, i_image = 0, 0
        for i in range(M.mtmd_input_chunks_size(chunks)):
            chunk = M.mtmd_input_chunks_get(chunks, i)
            if M.mtmd_input_chunk_get_type(chunk) == M.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n_past += decode_text_chunk(chat, chunk, n_past)
                continue
            kept, i_image = per_chunk[i_image], i_image + 1
            n_img = M.mtmd_input_chunk_get_n_tokens(chunk)
            assert M.mtmd_encode_chunk(chat.mctx, chunk) == 0
            embd = np.ctypeslib.as_array(M.mtmd_get_output_embd(chat.mctx), (n_img, width)).copy()
            tyx = image_positions(chat, chunk, n_past, n_img)[kept]
            k = len(kept)
            batch = L.llama_batch_init(k, width, 1)
            flat = np.ascontiguousarray(embd[kept]).ravel()
            ctypes.memmove(batch.embd, flat.ctypes.data, flat.nbytes)
            mrope = bool(M.mtmd_decode_use_mrope(chat.mctx))
            # M-RoPE takes 4 positions per embedding, section-major (t, y, x, z): a longer array than batch_init's
            pos = np.zeros(4 * k if mrope else k, dtype=np.int32)
            if mrope:
                pos[:k], pos[k:2 * k], pos[2 * k:3 * k] = tyx[:, 0], tyx[:, 1], tyx[:, 2]
            else:
                pos[:] = tyx[:, 0]
            pos_type = type(batch.pos)
            own_pos = ctypes.cast(batch.pos, ctypes.c_void_p).value  # the address (batch.pos is a view of the field)
            batch.pos = pos.ctypes.data_as(pos_type)
            for j in range(k):
                batch.n_seq_id[j], batch.logits[j] = 1, 0
                batch.seq_id[j][0] = 0
            batch.n_tokens = k
            non_causal = bool(M.mtmd_decode_use_non_causal(chat.mctx, chunk))
            if non_causal:
                L.llama_set_causal_attn(chat.ctx, False)
            assert L.llama_decode(chat.ctx, batch) == 0
            if non_causal:
                L.llama_set_causal_attn(chat.ctx, True)
            batch.pos = ctypes.cast(own_pos, pos_type)  # llama_batch_free frees its own array
            L.llama_batch_free(batch)
            n_past += M.mtmd_input_chunk_get_n_pos(chunk)
            if states is not None:
                states.append(recurrent_state(chat))
    finally:
        M.mtmd_input_chunks_free(chunks)
    return chat.logits()


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
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-m", "topv_edge.chat", str(model), str(pictures(family)),
                          "--mmproj", str(mmproj), "--keep", "0.25", "--json", "-p", QUESTION, "--threads", "2",
                          "--max-tokens", "2"], capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    (image,) = report["images"]
    assert image["pruned"], image
    assert image["n_kept"] < image["n_tokens"]
