"""A context sized by what is kept: without a probe (the default, divprune at layer 0) the unpruned picture never
enters the KV cache, so the chat needs room only for text + kept tokens, while the positions stay the original
ones (M-RoPE here)."""

from __future__ import annotations

import numpy as np
import pytest

from topv_edge.lab.synth import demo_image, pair_paths
from topv_edge.llama.stage import configure_topv
from topv_edge.pruning import native
from topv_edge.options import TopVOptions
from topv_edge.session import VisionChat

QUESTION = "What is in the picture?"


@pytest.fixture(scope="module")
def big_picture(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "picture-2048.png"
    demo_image((2048, 2048), seed=5).save(path)  # 64 x 64 merged tokens for the tiny Qwen3-VL: 4096
    return path


def test_a_4096_token_picture_fits_a_context_of_its_kept_tokens(models_dir, big_picture, libs):
    model, mmproj = pair_paths("qwen3vl", "tiny", models_dir)
    options = TopVOptions(keep=0.25)
    assert not options.probes  # the default reads the embeddings: no probe
    with VisionChat(model, mmproj, topv=options, threads=2, max_tokens=4) as small:
        answer, report = small.ask(QUESTION, [big_picture])
        (image,) = report.images
        kept_small = small.last_selection()[0]
        positions = small.kv_cell_positions()
    assert image.n_tokens == 4096 and image.pruned and image.n_kept == 1024
    assert report.n_ctx < image.n_tokens  # the unpruned picture alone would not fit this context
    assert report.kv_cells == report.text_tokens + image.n_kept + report.generated_tokens
    assert len(positions) == report.kv_cells
    # the same question in a context large enough for the unpruned picture: the same kept set and answer
    with VisionChat(model, mmproj, topv=options, threads=2, max_tokens=4, n_ctx=8192) as large:
        answer_large, report_large = large.ask(QUESTION, [big_picture])
        kept_large = large.last_selection()[0]
    assert report_large.n_ctx >= 8192
    assert np.array_equal(kept_small, kept_large)
    assert answer == answer_large


def test_a_probing_method_still_gets_room_for_its_probe(models_dir, big_picture, libs):
    model, mmproj = pair_paths("qwen3vl", "tiny", models_dir)
    options = TopVOptions(keep=0.25, layer=1, method="topv")
    assert options.probes
    with VisionChat(model, mmproj, topv=options, threads=2, max_tokens=2) as chat:
        _, report = chat.ask(QUESTION, [big_picture])
    (image,) = report.images
    assert image.pruned and image.n_kept == 1024 and image.probe_ms > 0
    assert report.n_ctx >= image.n_tokens  # the probe holds the whole picture for a moment


def test_the_stage_and_the_options_agree_on_when_a_probe_runs(models_dir, libs):
    """The context is sized before the stage exists (TopVOptions.probes); llama-server asks the stage
    (mtmd_topv_probes). Both must say the same for every method and layer."""
    model, mmproj = pair_paths("qwen3vl", "tiny", models_dir)
    with VisionChat(model, mmproj, topv=TopVOptions(), threads=2) as chat:
        seen = set()
        for method in native.METHODS:
            for layer in (0, 1):
                for enabled in (True, False):
                    options = TopVOptions(enabled=enabled, keep=0.25, layer=layer, method=method)
                    configure_topv(libs, chat.mctx, options, threads=2)
                    assert libs.topv_probes(chat.mctx) == options.probes, options
                    seen.add(options.probes)
    assert seen == {True, False}


def test_the_cells_of_a_chunk_follow_the_context_it_is_decoded_in(models_dir, big_picture, libs):
    """llama-server sizes its slots by mtmd_topv_chunk_n_cells: the kept tokens where the stage prunes the image in
    that context, all of them where the context makes it decode the image whole (a probe needs the whole image in
    one ubatch). The stage's own decision in that context is the same."""
    model, mmproj = pair_paths("qwen3vl", "tiny", models_dir)
    with VisionChat(model, mmproj, topv=TopVOptions(keep=0.25), threads=2, max_tokens=1) as chat:
        chat.ask(QUESTION, [big_picture])  # a context sized for the kept tokens: no probe, a ubatch below 4096
        assert chat.n_ubatch < 4096
        chunks = chat._tokenize(f"{QUESTION} {chat.marker} {QUESTION}", [big_picture.read_bytes()])
        try:
            M = chat.mtmd
            (image,) = [M.mtmd_input_chunks_get(chunks, i) for i in range(M.mtmd_input_chunks_size(chunks))
                        if M.mtmd_input_chunk_get_type(M.mtmd_input_chunks_get(chunks, i))
                        == M.MTMD_INPUT_CHUNK_TYPE_IMAGE]
            text = M.mtmd_input_chunks_get(chunks, 0)
            assert libs.topv_chunk_n_cells(chat.mctx, chat.ctx, text) == -1
            assert libs.topv_chunk_n_cells(chat.mctx, None, image) == -1  # bad arguments: an answer, no crash
            assert libs.topv_chunk_n_cells(None, chat.ctx, image) == -1
            assert libs.topv_chunk_n_kept(chat.mctx, chat.model, image) == 1024
            assert libs.topv_chunk_n_cells(chat.mctx, chat.ctx, image) == 1024
            probing = TopVOptions(keep=0.25, layer=1, method="topv")
            configure_topv(libs, chat.mctx, probing, threads=2)
            assert libs.topv_chunk_n_kept(chat.mctx, chat.model, image) == 1024
            assert libs.topv_chunk_n_cells(chat.mctx, chat.ctx, image) == 4096  # the probe's ubatch is too small
        finally:
            M.mtmd_input_chunks_free(chunks)
