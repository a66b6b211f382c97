"""Tiled pictures (issue 14): every tiled family the generator writes (topv_edge.lab.synth.TILED_FAMILIES) turns a
large picture into the image chunks `picture_chunks` says, in decode order, with its markers as text between them,
and answers unpruned through the Python runtime and llama-mtmd-cli."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import subprocess

import numpy as np
import pytest

from topv_edge.options import DEFAULT_OVERVIEW_WEIGHT
from topv_edge.lab.synth import TILED_FAMILIES, PictureChunk, demo_image, pair_paths, picture_chunks, preset_config

from helpers.server import binary
from helpers.stage import prefill_by_chunk

THREADS = 2
TILED = sorted(TILED_FAMILIES)

# a picture large enough to tile, per family (the tiny presets tile at small sizes)
PICTURE_SIZE: dict[str, tuple[int, int]] = {
    "llava16": (280, 200),  # best pinpoint 224 x 224: 2 x 2 tiles
    "minicpmv": (300, 200),  # 3 x 2 slices of 112 x 112, overview 140 x 98
    "smolvlm": (336, 224),  # longest edge 384: 384 x 256 -> 3 x 2 tiles of 128, overview 128 x 128
    "internvl": (300, 200),  # best of the 1..6-tile candidates 336 x 224: 3 x 2 tiles of 112, overview 112 x 112
    "lfm2": (3120, 1040),  # > 2 x 256 tokens of 76 px: 3 x 1 tiles of 512 (7 x 7 each), thumbnail 2052 x 684 (27 x 9)
}
# what llama.cpp makes of it: (role, tile_x, tile_y, n_tokens) per image chunk in decode order (written out: a change
# in the writer or in llama.cpp shows here)
EXPECTED: dict[str, list[tuple[str, int, int, int]]] = {
    "llava16": [("tile", 0, 0, 64), ("tile", 1, 0, 64), ("tile", 0, 1, 64), ("tile", 1, 1, 64), ("overview", -1, -1, 64)],
    "minicpmv": [("overview", -1, -1, 32)] + [("tile", x, y, 32) for y in range(2) for x in range(3)],
    "smolvlm": [("tile", x, y, 16) for y in range(2) for x in range(3)] + [("overview", -1, -1, 16)],
    "internvl": [("tile", x, y, 16) for y in range(2) for x in range(3)] + [("overview", -1, -1, 16)],
    "lfm2": [("tile", x, 0, 49) for x in range(3)] + [("overview", -1, -1, 243)],
}


@pytest.fixture(scope="session")
def tiled_models_dir(tmp_path_factory: pytest.TempPathFactory):
    from topv_edge.lab.synth import write_pair

    out = tmp_path_factory.mktemp("tiled-models")
    for family in TILED:
        write_pair(family, "tiny", out, seed=0)
    return out


def big_picture(tmp_path_factory, family: str, seed: int = 3):
    size = PICTURE_SIZE[family]
    path = tmp_path_factory.getbasetemp() / f"tiled-{size[0]}x{size[1]}-{seed}.png"
    if not path.exists():
        demo_image(size, seed=seed).save(path)
    return path


def test_every_tiled_family_is_tested():
    assert set(TILED) == set(EXPECTED) == set(PICTURE_SIZE)


@pytest.mark.parametrize("family", TILED)
def test_picture_chunks_of_the_test_picture(family):
    chunks = picture_chunks(preset_config(family, "tiny").vision, *PICTURE_SIZE[family])
    assert [(c.role, c.tile_x, c.tile_y, c.n_tokens) for c in chunks] == EXPECTED[family]
    assert sum(c.role == "overview" for c in chunks) == 1 and sum(c.role == "tile" for c in chunks) >= 2
    assert all(isinstance(c, PictureChunk) and c.nx * c.ny == c.n_tokens for c in chunks)


@contextlib.contextmanager
def picture_prompt(libs, mctx, picture):
    """The chunks mtmd makes of "<marker>What is in the picture?" with `picture` (freed on exit)."""
    M = libs.mtmd_cpp
    data = picture.read_bytes()
    bitmap = M.mtmd_helper_bitmap_init_from_buf(mctx, (ctypes.c_uint8 * len(data)).from_buffer_copy(data), len(data), False)
    text = f"{M.mtmd_default_marker().decode()}What is in the picture?".encode()
    inp = M.mtmd_input_text()
    inp.text, inp.text_len, inp.add_special, inp.parse_special = text, len(text), True, True
    chunks = M.mtmd_input_chunks_init()
    try:
        assert M.mtmd_tokenize(mctx, chunks, ctypes.byref(inp), (M.mtmd_bitmap_p_ctypes * 1)(bitmap), 1) == 0
        yield chunks
    finally:
        M.mtmd_input_chunks_free(chunks)
        M.mtmd_bitmap_free(bitmap)


def tokenize_picture(libs, model, mmproj, picture):
    """(chunk types, image tokens per image chunk, logits after evaluating them all) of one prompt."""
    L, M = libs.llama_cpp, libs.mtmd_cpp
    mp = L.llama_model_default_params()
    lm = L.llama_model_load_from_file(str(model).encode(), mp)
    assert lm
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_threads, cp.n_threads_batch = 4096, 1024, 1024, THREADS, THREADS
    ctx = L.llama_init_from_model(lm, cp)
    p = M.mtmd_context_params_default()
    p.use_gpu, p.n_threads, p.warmup, p.print_timings = False, THREADS, False, False
    mctx = M.mtmd_init_from_file(str(mmproj).encode(), lm, p)
    assert mctx
    try:
        with picture_prompt(libs, mctx, picture) as chunks:
            types, n_image = [], []
            for i in range(M.mtmd_input_chunks_size(chunks)):
                c = M.mtmd_input_chunks_get(chunks, i)
                types.append(M.mtmd_input_chunk_get_type(c))
                if types[-1] == M.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                    n_image.append(M.mtmd_input_chunk_get_n_tokens(c))
            n_past = L.llama_pos(0)
            assert M.mtmd_helper_eval_chunks(mctx, ctx, chunks, 0, 0, 1024, True, ctypes.byref(n_past)) == 0
            logits = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1),
                                           shape=(L.llama_vocab_n_tokens(L.llama_model_get_vocab(lm)),)).copy()
    finally:
        M.mtmd_free(mctx)
        L.llama_free(ctx)
        L.llama_model_free(lm)
    return types, n_image, logits


@pytest.mark.parametrize("family", TILED)
def test_tiled_picture_through_mtmd(tiled_models_dir, libs, tmp_path_factory, family):
    """llama.cpp makes the chunks picture_chunks says, and the logits are finite and depend on the picture."""
    model, mmproj = pair_paths(family, "tiny", tiled_models_dir)
    types, n_image, logits = tokenize_picture(libs, model, mmproj, big_picture(tmp_path_factory, family))
    other = tokenize_picture(libs, model, mmproj, big_picture(tmp_path_factory, family, seed=4))[2]
    assert n_image == [e[3] for e in EXPECTED[family]]
    assert types[0] == 0 and types[-1] == 0
    assert np.all(np.isfinite(logits)) and np.std(logits) > 1e-3
    assert not np.allclose(logits, other)


@pytest.mark.parametrize("family", TILED)
def test_unpruned_tiled_answer_through_vision_chat(tiled_models_dir, libs, tmp_path_factory, family):
    from topv_edge.options import TopVOptions
    from topv_edge.session import VisionChat

    model, mmproj = pair_paths(family, "tiny", tiled_models_dir)
    with VisionChat(model, mmproj, topv=TopVOptions(enabled=False), threads=THREADS, max_tokens=4) as chat:
        answer, report = chat.ask("What is in the picture?", images=[big_picture(tmp_path_factory, family)])
    assert isinstance(answer, str)
    assert [im.n_tokens for im in report.images] == [e[3] for e in EXPECTED[family]]
    assert all(im.n_kept == im.n_tokens and not im.pruned for im in report.images)


def run_mtmd_cli(libs, models_dir, tmp_path_factory, family: str, *flags: str) -> subprocess.CompletedProcess:
    """llama-mtmd-cli of the patched build, one question about the family's big picture, greedy (exit code checked)."""
    model, mmproj = pair_paths(family, "tiny", models_dir)
    exe = binary(libs, "llama-mtmd-cli")
    env = dict(os.environ, LD_LIBRARY_PATH=str(libs.directory / "lib"))
    r = subprocess.run([str(exe), "-m", str(model), "--mmproj", str(mmproj), "--image",
                        str(big_picture(tmp_path_factory, family)), "-p", "What is in the picture?", "-n", "2",
                        "--temp", "0", "-t", str(THREADS), "--jinja", "--no-warmup", "-c", "4096", "-b", "1024",
                        "-ub", "1024", *flags], capture_output=True, text=True, errors="replace", env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


@pytest.mark.parametrize("family", TILED)
def test_unpruned_tiled_answer_through_llama_mtmd_cli(tiled_models_dir, libs, tmp_path_factory, family):
    r = run_mtmd_cli(libs, tiled_models_dir, tmp_path_factory, family)
    # mtmd encoded every chunk of the picture (overview and tiles), the same chunks as the Python side's tokenising
    batches = re.findall(r"encoding mtmd batch, n_chunks = (\d+)", r.stdout + r.stderr)
    assert sum(map(int, batches)) == len(EXPECTED[family]), (r.stdout + r.stderr)[-2000:]


# --- the TopV stage on tiled pictures: one budget per picture ---------------------------------------

KEEP = 0.25
# the probe's path (TopV at layer 2 reads probed features); the default (divprune at layer 0) has no probe
PROBED = {"keep": KEEP, "layer": 2, "method": "topv"}


def expected_budgets(chunks: list[tuple[str, int, int, int]], keep: float, weight: float = 1.0) -> list[int]:
    """The documented rule (docs/families.md "Tiled pictures"), written out independently of the stage: the
    picture keeps round(keep x its tokens); the overview gets its tokens' share with weight `weight` (at least one
    token, at most all of them), the tiles split the rest in proportion to their tokens by cumulative rounding,
    each at least one token."""
    from math import floor, inf

    n_all = sum(c[3] for c in chunks)
    budget = max(1, min(n_all, floor(keep * n_all + 0.5)))
    n_ov = sum(c[3] for c in chunks if c[0] == "overview")
    n_tile = n_all - n_ov
    share = 1.0 if weight == inf else weight * n_ov / (weight * n_ov + n_tile)
    k_ov = min(max(floor(budget * share + 0.5), 1), n_ov, budget) if n_ov else 0
    rest, before, out = budget - k_ov, 0, []
    for role, _, _, n in chunks:
        if role == "overview":
            out.append(k_ov)
            continue
        k = (2 * rest * (before + n) + n_tile) // (2 * n_tile) - (2 * rest * before + n_tile) // (2 * n_tile)
        before += n
        out.append(min(max(k, 1), n))
    return out


def tiled_session(models_dir, family: str, **topv) -> "VisionChat":
    from topv_edge.options import TopVOptions
    from topv_edge.session import VisionChat

    model, mmproj = pair_paths(family, "tiny", models_dir)
    return VisionChat(model, mmproj, topv=TopVOptions(**topv), threads=THREADS, max_tokens=4)


@pytest.mark.parametrize("family", TILED)
def test_tiled_keep_all_is_bit_identical_to_pruning_off(tiled_models_dir, libs, tmp_path_factory, family):
    from helpers.stage import memory_cells

    picture = big_picture(tmp_path_factory, family)
    results = []
    for topv in ({"enabled": False}, {"keep": 1.0}):
        with tiled_session(tiled_models_dir, family, **topv) as chat:
            images, _, _ = chat.add_user_message("What is in the picture?", [picture])
            results.append(([im.pruned for im in images], chat.logits(), memory_cells(chat)))
    (p0, l0, c0), (p1, l1, c1) = results
    assert not any(p0) and not any(p1) and len(p0) == len(EXPECTED[family])
    assert np.array_equal(l0, l1)
    assert np.array_equal(c0, c1)


@pytest.mark.parametrize("weight", [1.0, DEFAULT_OVERVIEW_WEIGHT], ids=["same-ratio", "default"])
@pytest.mark.parametrize("family", TILED)
def test_tiled_picture_is_pruned_to_one_budget(tiled_models_dir, libs, tmp_path_factory, family, weight):
    """Every chunk gets its share of the picture's budget by the documented rule (same ratio: the picture keeps
    round(keep x its tokens), each chunk within one token of that ratio; the default: the overview whole when the
    budget allows, decoded unpruned, the tiles sharing the rest), each pruned chunk's kept set is the pass's choice
    on its own grid and probed features, and the memory is exactly the text and the kept tokens at their original
    positions."""
    from helpers.stage import memory_cells

    import topv_edge

    picture = big_picture(tmp_path_factory, family)
    expected = EXPECTED[family]
    with tiled_session(tiled_models_dir, family, overview_weight=weight, **PROBED) as chat:
        records, n_past = prefill_by_chunk(chat, picture)
        cells = memory_cells(chat)[:, 0]
    n_all = sum(e[3] for e in expected)
    budgets = expected_budgets(expected, KEEP, weight)
    if weight == 1.0:
        assert sum(budgets) == round(KEEP * n_all)
    assert len(records) == len(expected)
    kept_positions = []
    for r, (role, tx, ty, n), budget in zip(records, expected, budgets):
        st, rep = r["stats"], r["report"]
        assert (rep.role, rep.tile) == (role, (tx, ty) if role == "tile" else None)
        assert st.n_picture_tokens == n_all and st.n_chunks == len(expected) and st.n_tokens == n
        assert rep.n_kept == budget == r["planned"]
        if weight == 1.0:
            assert abs(budget - KEEP * n) <= 1  # each chunk within one token of the picture's ratio
        if budget == n:  # the share covers the chunk: decoded unpruned, bit for bit the stock path
            assert not rep.pruned and rep.kept_whole and role == "overview"
            kept_positions.extend(r["n_past"] + i for i in range(n))
            continue
        assert rep.pruned, rep.note
        assert st.n_budget == budget == st.n_kept
        kept = r["kept"]
        assert np.all(np.diff(kept) > 0) and kept[0] >= 0 and kept[-1] < n
        # the pass's choice on this chunk's own grid (resampler queries: a 1-row grid without spatial terms)
        spatial = family != "minicpmv"
        params = {} if spatial else {"beta": 0.0, "gamma": 0.0}
        assert r["grid"] == ((st.grid_w, st.grid_h) if spatial else (n, 1))
        want, _ = topv_edge.select(r["source"], r["target"], r["grid"], budget, method="topv", threads=2, **params)
        assert np.array_equal(kept, want)
        kept_positions.extend((r["n_past"] + kept).tolist())
    # the memory: every text token and the kept image tokens, at their unpruned positions
    text_positions = sorted(set(range(n_past)) - {r["n_past"] + i for r in records for i in range(r["n_tokens"])})
    assert sorted(cells.tolist()) == sorted(text_positions + kept_positions)
    assert len(cells) == len(text_positions) + sum(budgets)
    if weight == DEFAULT_OVERVIEW_WEIGHT:
        ov = [b for b, e in zip(budgets, expected) if e[0] == "overview"][0]
        assert ov == min(sum(e[3] for e in expected if e[0] == "overview"), round(KEEP * n_all))


@pytest.mark.parametrize("weight", [2.0, float("inf")])
def test_overview_weight_moves_the_budget_to_the_overview(tiled_models_dir, libs, tmp_path_factory, weight):
    """With the overview weighted, the picture's budget is the same and the overview gets more of it than at the
    same ratio (inf: all of its tokens, decoded unpruned: its share covers it); the runtime plans exactly what the
    stage decodes."""
    family = "smolvlm" if "smolvlm" in TILED else TILED[0]
    picture = big_picture(tmp_path_factory, family)
    with tiled_session(tiled_models_dir, family, keep=KEEP, overview_weight=weight) as chat:
        records, _ = prefill_by_chunk(chat, picture)
    got = [r["report"].n_kept for r in records]
    assert got == [r["planned"] for r in records]
    assert got == expected_budgets(EXPECTED[family], KEEP, weight)
    ov = [r for r in records if r["report"].role == "overview"][0]
    if weight == float("inf"):
        assert not ov["report"].pruned and ov["report"].n_kept == ov["n_tokens"]
        assert "share of the picture's budget covers" in ov["report"].note
    assert ov["report"].n_kept > expected_budgets(EXPECTED[family], KEEP)[records.index(ov)]


@pytest.mark.parametrize("family", TILED)
def test_chat_json_reports_every_chunk_of_the_picture_pruned(tiled_models_dir, libs, tmp_path_factory, family):
    import json
    import sys

    model, mmproj = pair_paths(family, "tiny", tiled_models_dir)
    r = subprocess.run([sys.executable, "-m", "topv_edge.chat", str(model), str(big_picture(tmp_path_factory, family)),
                        "--mmproj", str(mmproj), "--keep", "0.25", "--json", "-p", "What is in the picture?",
                        "--max-tokens", "2", "--threads", "2"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads(r.stdout.strip().splitlines()[-1])
    (pic,) = report["pictures"]
    expected = EXPECTED[family]
    budgets = expected_budgets(expected, 0.25, DEFAULT_OVERVIEW_WEIGHT)
    assert pic["tiles"] == sum(e[0] == "tile" for e in expected)
    assert [c["role"] for c in pic["chunks"]] == [e[0] for e in expected]
    # every chunk pruned, but the overview when its share covers it (the default rule keeps it whole)
    assert [c["pruned"] for c in pic["chunks"]] == [b < e[3] for b, e in zip(budgets, expected)], pic["chunks"]
    assert all(c["pruned"] for c in pic["chunks"] if c["role"] == "tile")
    assert [c["n_kept"] for c in pic["chunks"]] == budgets
    assert pic["n_tokens"] == sum(e[3] for e in expected) == report["image_tokens"]
    assert pic["n_kept"] == sum(budgets) == report["kept_tokens"]
    assert len(report["images"]) == len(expected)
    assert "note: image not pruned" not in r.stderr  # the overview kept whole by the rule is no news


def test_lfm2_small_picture_is_one_chunk_with_its_grid_row_major(tiled_models_dir, libs, tmp_path):
    """LFM2-VL: a picture below the tiling threshold is ONE image chunk on the dynamic grid `picture_chunks` says
    (600 x 400 -> at least 64 tokens of 76 px: 760 x 532, 10 x 7), mtmd reports only its count (nx = n_tokens,
    ny = 1: not M-RoPE); its tokens are row-major over nx x ny after the pixel unshuffle: inverting the pixels of
    token (col 6, row 2) changes output row 2 * nx + 6 the most (row 6 * ny + 2 were it column-major). The text
    model is hybrid (short-convolution state + KV cache)."""
    from PIL import Image

    (chunk,) = picture_chunks(preset_config("lfm2", "tiny").vision, 600, 400)
    assert (chunk.role, chunk.nx, chunk.ny, chunk.n_tokens) == ("single", 10, 7, 70)
    img = demo_image((600, 400), seed=3)
    a, b = tmp_path / "small.png", tmp_path / "small-changed.png"
    img.save(a)
    px = np.array(img)
    px[118:167, 364:416] = 255 - px[118:167, 364:416]  # token (6, 2) of the 760 x 532 resize: x 456..532, y 152..228
    Image.fromarray(px).save(b)
    L, M = libs.llama_cpp, libs.mtmd_cpp
    model, mmproj = pair_paths("lfm2", "tiny", tiled_models_dir)
    lm = L.llama_model_load_from_file(str(model).encode(), L.llama_model_default_params())
    assert lm and L.llama_model_is_hybrid(lm) and not L.llama_model_is_recurrent(lm)
    p = M.mtmd_context_params_default()
    p.use_gpu, p.n_threads, p.warmup, p.print_timings = False, THREADS, False, False
    mctx = M.mtmd_init_from_file(str(mmproj).encode(), lm, p)
    assert mctx
    n_embd = L.llama_model_n_embd_inp(lm)
    rows = []
    try:
        for picture in (a, b):
            with picture_prompt(libs, mctx, picture) as chunks:
                image = [M.mtmd_input_chunks_get(chunks, i) for i in range(M.mtmd_input_chunks_size(chunks))
                         if M.mtmd_input_chunk_get_type(M.mtmd_input_chunks_get(chunks, i)) == 1]
                assert len(image) == 1
                it = M.mtmd_input_chunk_get_tokens_image(image[0])
                n = M.mtmd_image_tokens_get_n_tokens(it)
                assert (n, M.mtmd_image_tokens_get_nx(it), M.mtmd_image_tokens_get_ny(it)) == (70, 70, 1)
                assert M.mtmd_encode_chunk(mctx, image[0]) == 0
                rows.append(np.ctypeslib.as_array(M.mtmd_get_output_embd(mctx), shape=(n * n_embd,))
                            .reshape(n, n_embd).copy())
    finally:
        M.mtmd_free(mctx)
        L.llama_model_free(lm)
    d = np.linalg.norm(rows[0] - rows[1], axis=1)
    order = np.argsort(-d)
    assert order[0] == 2 * chunk.nx + 6
    assert d[order[0]] > 3 * d[order[1]]  # the changed token stands out over what attention spreads


@pytest.mark.parametrize("family", TILED)
def test_llama_mtmd_cli_prunes_every_chunk_of_the_picture(tiled_models_dir, libs, tmp_path_factory, family):
    """llama-mtmd-cli goes through the same stage: one log line per image chunk, each pruned with its share."""
    r = run_mtmd_cli(libs, tiled_models_dir, tmp_path_factory, family, "--topv-keep", "0.25")
    pruned = re.findall(r"topv: (tile \((\d+), (\d+)\)|overview).*?: (\d+) tokens -> (\d+) kept", r.stderr)
    whole = re.findall(r"topv: overview, chunk \d+/\d+ of a \d+-token picture, of (\d+) tokens decoded unpruned "
                       r"\(its share of the picture's budget covers all", r.stderr)
    expected = EXPECTED[family]
    budgets = expected_budgets(expected, 0.25, DEFAULT_OVERVIEW_WEIGHT)
    want = [(e[0], e[3], b) for e, b in zip(expected, budgets) if b < e[3]]
    assert [("tile" if l[0].startswith("tile") else "overview", int(l[3]), int(l[4])) for l in pruned] == want, \
        r.stderr[-3000:]
    assert [int(n) for n in whole] == [e[3] for e, b in zip(expected, budgets) if b == e[3]]


@pytest.mark.parametrize("family", TILED)
def test_pruned_tiled_picture_equals_a_decode_of_the_kept_rows_alone(tiled_models_dir, libs, tmp_path_factory, family):
    """The logits after the pruned picture are those of a decode of only the kept rows of every chunk (the probes
    left nothing behind, the markers between the chunks stayed); for the hybrid LFM2 the recurrent (short
    convolution) state after each chunk is the state after a decode of its kept rows alone."""
    from helpers.stage import manual_prefill

    picture = big_picture(tmp_path_factory, family)
    hybrid = family == "lfm2"
    with tiled_session(tiled_models_dir, family, **PROBED) as chat:
        records, _ = prefill_by_chunk(chat, picture, states=hybrid)
        stage = chat.logits()
    assert all(r["report"].pruned for r in records if r["report"].role == "tile")
    # (the overview, kept whole by the default rule, has all its rows)
    kept = [r["kept"] if r["report"].pruned else np.arange(r["n_tokens"]) for r in records]
    manual_states: list[bytes] = []
    full_states: list[bytes] = []
    with tiled_session(tiled_models_dir, family, enabled=False) as chat:
        manual = manual_prefill(chat, picture, kept, manual_states)
    with tiled_session(tiled_models_dir, family, enabled=False) as chat:
        full = manual_prefill(chat, picture, [np.arange(r["n_tokens"]) for r in records], full_states)
    np.testing.assert_allclose(stage, manual, rtol=1e-5, atol=1e-5)
    assert not np.allclose(stage, full, rtol=1e-3, atol=1e-3)  # pruning changed something: the check can fail
    if hybrid:
        # (the convolution state holds the last few inputs only: after the closing text it is the same either way)
        assert [r["state"] for r in records] == manual_states
        assert manual_states != full_states


def test_viz_says_it_draws_single_chunk_pictures_only(tiled_models_dir, libs, tmp_path_factory, tmp_path):
    import sys

    family = "smolvlm" if "smolvlm" in TILED else TILED[0]
    model, mmproj = pair_paths(family, "tiny", tiled_models_dir)
    r = subprocess.run([sys.executable, "-m", "topv_edge.viz", str(model), str(big_picture(tmp_path_factory, family)),
                        "--mmproj", str(mmproj), "-o", str(tmp_path / "kept.png"), "--threads", "2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    n = len(EXPECTED[family])
    assert f"made {n} image chunks of the picture (an overview and {n - 1} tiles)" in r.stderr, r.stderr
