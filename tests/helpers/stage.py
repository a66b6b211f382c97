"""Helpers of the tests that drive the patched llama.cpp by hand: a prompt's chunks, a decode of only the kept rows
at their original positions, and what the memory holds (KV cells, recurrent state)."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from topv_edge.session import VisionChat
from topv_edge.session.files import read_media

QUESTION = "What is in the picture?"


LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY = 1


def allow_position_gaps(chat: VisionChat) -> None:
    """Let the context take a decode with position gaps, as the stage does before its kept decode (patches/01:
    llama.cpp's position checks stay upstream's on every other context)."""
    fn = chat.llama.llama_cpp._lib.llama_set_allow_pos_gaps
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_bool], None
    fn(chat.ctx, True)


def decode_text_chunk(chat: VisionChat, chunk, first_pos: int) -> int:
    """Decode a text chunk with llama_decode at positions first_pos.. (all logits on); returns its token count."""
    L, M = chat.llama, chat.mtmd
    n = ctypes.c_size_t()
    toks = M.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
    batch = L.llama_batch_init(n.value, 0, 1)
    for j in range(n.value):
        batch.token[j], batch.pos[j], batch.n_seq_id[j], batch.logits[j] = toks[j], first_pos + j, 1, 1
        batch.seq_id[j][0] = 0
    batch.n_tokens = n.value
    assert L.llama_decode(chat.ctx, batch) == 0
    L.llama_batch_free(batch)
    return n.value


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
    return chat._tokenize(chat._render([{"role": "user", "content": content}]), [read_media(picture)])


def manual_prefill(chat: VisionChat, picture: Path, kept: np.ndarray | list[np.ndarray],
                   states: list[bytes] | None = None) -> np.ndarray:
    """Prefill with llama_decode by hand: the text chunks, then only the `kept` rows of the image (whole rows,
    deepstack slices included) at their original positions (4 sections for M-RoPE), with the model's causal setting
    for images, then the text at the positions it has unpruned. Returns the next-token logits.

    A tiled picture (several image chunks, markers between them): `kept` is a list, the rows of each image chunk;
    `states` (a list) gets the recurrent state after each image chunk.
    The generalisation of test_llama_patch.py's manual_prefill to every family (its version is ordinary RoPE only)."""
    L, M = chat.llama, chat.mtmd
    assert chat.ctx is None, "a fresh session: the context is created here"
    per_chunk = kept if isinstance(kept, list) else [kept]
    chunks = prompt_chunks(chat, picture)
    plan = chat._plan(chunks)
    chat._create_context(plan.peak_cells, plan.largest_image)
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


def prefill_by_chunk(chat: VisionChat, picture: Path, states: bool = False) -> tuple[list[dict], int]:
    """The first message's prefill, chunk by chunk as VisionChat does it, with what the stage did for each image chunk
    (a tile, an overview, a video's frames) read right after it (its stats, kept indices and features); returns
    (records, n_past)."""
    from topv_edge.llama.stage import decode_image

    lib = chat._lib
    chunks = prompt_chunks(chat, picture)
    try:
        plan = chat._plan(chunks)
        chat._create_context(plan.peak_cells, plan.largest_image)
        records, n_past = [], 0
        for chunk, is_image, n, planned in ((c.chunk, c.is_image, c.n_tokens, c.n_cells) for c in plan.chunks):
            if not is_image:
                n_past += decode_text_chunk(chat, chunk, n_past)
                continue
            with chat.log.capture() as log:
                new_n_past, report = decode_image(lib, chat.mctx, chat.ctx, chunk, n_past, 0, chat.n_batch, log)
            st = lib.topv_stats(chat.mctx)
            records.append(dict(report=report, planned=planned, n_past=n_past, n_tokens=n, stats=st,
                                positions=image_positions(chat, chunk, n_past, n),
                                grid=(st.grid_w, st.grid_h), kept=lib.topv_kept(chat.mctx),
                                source=lib.topv_features(chat.mctx, False), target=lib.topv_features(chat.mctx, True),
                                state=recurrent_state(chat) if states else None))
            n_past = new_n_past
    finally:
        chat.mtmd.mtmd_input_chunks_free(chunks)
    return records, n_past
