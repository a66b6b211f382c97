"""The project's GGUF writer: deterministic files that llama.cpp (through llama-cpp-python's stock API) loads,
tokenises a picture with the expected number of image tokens and evaluates to finite, varying logits."""

from __future__ import annotations

import base64
import ctypes
import io
import os

import numpy as np
import pytest

from topv_edge.session.templates import LLAVA15_TEMPLATE, compile_chat_template
from topv_edge.lab.synth import (PRESETS, demo_image, family_tokenizer, pair_paths, read_fingerprint,
                                 text_weight_shapes, write_pair)

from helpers.families import FAMILIES

THREADS = 2
# Image tokens of the tiny presets for a picture of image_size x image_size (112 x 112, patch 14: 8 x 8 patches):
# llava: one token per patch, 8 * 8 = 64; qwen2vl: 2 x 2 patches merged, 4 * 4 = 16; gemma3: 2 x 2 average pool, 16.
EXPECTED_IMAGE_TOKENS = {"llava": 64, "qwen2vl": 16, "gemma3": 16}
PROMPTS = {
    "llava": "USER: {m}\nWhat is in the picture?\nASSISTANT:",
    "qwen2vl": "<|im_start|>user\n{m}What is in the picture?<|im_end|>\n<|im_start|>assistant\n",
    "gemma3": "<start_of_turn>user\n{m}What is in the picture?<end_of_turn>\n<start_of_turn>model\n",
}


@pytest.fixture(scope="module")
def lcpp():
    """(llama_cpp, mtmd_cpp). Only stock llama-cpp-python API is used; if the project's patched build is there
    it is loaded instead (a superset), because one process can hold only one libllama and other tests need it."""
    from topv_edge.llama import libs as llama_libs

    lib_dir = llama_libs.build_dir() / "lib"
    if lib_dir.is_dir() and any(lib_dir.glob("*mtmd*")) and not os.environ.get("LLAMA_CPP_LIB_PATH"):
        llama_libs.load()
    import llama_cpp
    from llama_cpp import mtmd_cpp

    return llama_cpp, mtmd_cpp


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class _Session:
    """A text model + mmproj through the raw mtmd API (warmup off, own thread count)."""

    def __init__(self, lcpp, model, mmproj):
        self.llama_cpp, self.mtmd = lcpp
        self.llm = self.llama_cpp.Llama(model_path=str(model), n_ctx=512, n_batch=256, n_threads=THREADS,
                                        verbose=False)
        p = self.mtmd.mtmd_context_params_default()
        p.use_gpu, p.n_threads, p.warmup, p.print_timings = False, THREADS, False, False
        self.ctx = self.mtmd.mtmd_init_from_file(str(mmproj).encode(), self.llm.model, p)
        assert self.ctx, f"mtmd_init_from_file failed for {mmproj}"

    def close(self):
        self.mtmd.mtmd_free(self.ctx)
        self.llm.close()

    def run(self, prompt: str, image) -> tuple[list[tuple[int, int]], np.ndarray]:
        """Tokenise prompt (with the media marker) + picture, evaluate; returns [(chunk type, n_tokens)], logits."""
        m = self.mtmd
        data = _png(image)
        bitmap = m.mtmd_helper_bitmap_init_from_buf(self.ctx, (ctypes.c_uint8 * len(data)).from_buffer(bytearray(data)),
                                                     len(data), False)
        assert bitmap
        text = prompt.format(m=m.mtmd_default_marker().decode()).encode()
        inp = m.mtmd_input_text()
        inp.text, inp.text_len, inp.add_special, inp.parse_special = text, len(text), True, True
        chunks = m.mtmd_input_chunks_init()
        try:
            assert m.mtmd_tokenize(self.ctx, chunks, ctypes.byref(inp), (m.mtmd_bitmap_p_ctypes * 1)(bitmap), 1) == 0
            layout = []
            for i in range(m.mtmd_input_chunks_size(chunks)):
                c = m.mtmd_input_chunks_get(chunks, i)
                layout.append((m.mtmd_input_chunk_get_type(c), m.mtmd_input_chunk_get_n_tokens(c)))
            self.llm._ctx.kv_cache_clear()
            n_past = self.llama_cpp.llama_pos(0)
            assert m.mtmd_helper_eval_chunks(self.ctx, self.llm.ctx, chunks, 0, 0, 256, True,
                                             ctypes.byref(n_past)) == 0
            ptr = self.llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
            logits = np.ctypeslib.as_array(ptr, shape=(self.llm.n_vocab(),)).copy()
        finally:
            m.mtmd_input_chunks_free(chunks)
            m.mtmd_bitmap_free(bitmap)
        return layout, logits


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_pair_gives_the_expected_image_tokens_and_finite_logits(models_dir, lcpp, family):
    cfg = PRESETS[(family, "tiny")]
    assert cfg.text.n_layer >= 4 and cfg.vision.n_embd != cfg.vision.n_ff and cfg.text.n_embd != cfg.text.n_ff
    assert cfg.vision.n_image_tokens() == EXPECTED_IMAGE_TOKENS[family]
    s = _Session(lcpp, *pair_paths(family, "tiny", models_dir))
    try:
        size = (cfg.vision.image_size, cfg.vision.image_size)
        layout, logits = s.run(PROMPTS[family], demo_image(size, seed=3))
        _, logits_other = s.run(PROMPTS[family], demo_image(size, seed=4))
        mtmd = s.mtmd
        assert mtmd.mtmd_decode_use_mrope(s.ctx) == (family == "qwen2vl")
        assert mtmd.mtmd_decode_use_non_causal(s.ctx, None) == (family == "gemma3")
    finally:
        s.close()
    types = [t for t, _ in layout]
    assert types.count(1) == 1 and types[0] == 0 and types[-1] == 0  # text, image, text (MTMD_INPUT_CHUNK_TYPE_IMAGE = 1)
    assert dict(layout)[1] == EXPECTED_IMAGE_TOKENS[family]
    assert np.all(np.isfinite(logits)) and np.std(logits) > 0.1
    assert not np.allclose(logits, logits_other)  # the picture reaches the text model


def test_llava_with_class_embedding_loads(tmp_path, lcpp):
    import gguf

    model, mmproj = write_pair("llava", "tiny", tmp_path, seed=0, class_embedding=True)
    assert model.name == "llava-tiny-cls.gguf"
    r = gguf.GGUFReader(str(mmproj))
    names = {t.name for t in r.tensors}
    cfg = PRESETS[("llava", "tiny")].vision
    # LLaVA-1.5's tower as the legacy converter writes it: class embedding, no patch bias, quick GELU
    # (use_gelu false), the last ViT block left out
    assert "v.class_embd" in names and "v.patch_embd.bias" not in names
    assert r.get_field("clip.use_gelu").contents() is False
    assert r.get_field("clip.vision.block_count").contents() == cfg.n_layer - 1
    assert not any(n.startswith(f"v.blk.{cfg.n_layer - 1}.") for n in names)
    s = _Session(lcpp, model, mmproj)
    try:
        layout, logits = s.run(PROMPTS["llava"], demo_image((112, 112)))
    finally:
        s.close()
    assert dict(layout)[1] == 64 and np.all(np.isfinite(logits)) and np.std(logits) > 0.1


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_handler_with_a_data_uri(models_dir, lcpp, family):
    """llama-cpp-python's MTMDChatHandler renders the GGUF's chat template with image parts as text parts."""
    llama_cpp, _ = lcpp
    from llama_cpp.llama_chat_format import MTMDChatHandler

    model, mmproj = pair_paths(family, "tiny", models_dir)
    llm = llama_cpp.Llama(model_path=str(model), n_ctx=512, n_threads=THREADS, verbose=False,
                          chat_handler=MTMDChatHandler(clip_model_path=str(mmproj), verbose=False, use_gpu=False))
    try:
        uri = "data:image/png;base64," + base64.b64encode(_png(demo_image((112, 112), seed=1))).decode()
        out = llm.create_chat_completion(messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": uri}}, {"type": "text", "text": "What is it?"}]}],
            max_tokens=4, temperature=0.0)
    finally:
        llm.close()
    assert out["usage"]["prompt_tokens"] > EXPECTED_IMAGE_TOKENS[family]
    assert out["usage"]["completion_tokens"] >= 1 or out["choices"][0]["finish_reason"] == "stop"


def test_special_tokens_are_control_tokens(models_dir, lcpp):
    import gguf

    r = gguf.GGUFReader(str(pair_paths("qwen2vl", "tiny", models_dir)[0]))
    tokens = [str(bytes(r.fields["tokenizer.ggml.tokens"].parts[i]), "utf-8")
              for i in r.fields["tokenizer.ggml.tokens"].data]
    types = [int(r.fields["tokenizer.ggml.token_type"].parts[i][0]) for i in r.fields["tokenizer.ggml.token_type"].data]
    for s in ("<|vision_start|>", "<|vision_end|>", "<|im_start|>", "<|im_end|>"):
        assert types[tokens.index(s)] == gguf.TokenType.CONTROL
    assert types[tokens.index("a")] == gguf.TokenType.NORMAL
    llama_cpp, _ = lcpp
    llm = llama_cpp.Llama(model_path=str(pair_paths("qwen2vl", "tiny", models_dir)[0]), n_ctx=64, verbose=False,
                          vocab_only=True)
    try:
        assert len(llm.tokenize(b"<|vision_start|>", add_bos=False, special=True)) == 1
        ids = llm.tokenize("héllo wörld ✓ 123".encode(), add_bos=False)  # byte-level BPE: anything tokenises
        assert llm.detokenize(ids).decode() == "héllo wörld ✓ 123"
    finally:
        llm.close()


def test_templates_render_as_the_model_was_trained():
    """Rendered the way topv_edge, llama-cpp-python and HF do (trim_blocks: a newline right after a block tag
    is dropped, which once cost the demo model answers), list contents print their text parts."""
    msgs = [{"role": "user", "content": [{"type": "text", "text": "<__media__>"}, {"type": "text", "text": "hi"}]}]
    llava = "USER: <__media__>hi\nASSISTANT:"
    for source, expect in ((family_tokenizer("llava").chat_template, llava), (LLAVA15_TEMPLATE, llava),
                           (family_tokenizer("qwen2vl").chat_template,
                            "<|im_start|>user\n<__media__>hi<|im_end|>\n<|im_start|>assistant\n"),
                           (family_tokenizer("gemma3").chat_template,
                            "<bos><start_of_turn>user\n<__media__>hi<end_of_turn>\n<start_of_turn>model\n")):
        tpl = compile_chat_template(source)
        assert tpl.render(messages=msgs, add_generation_prompt=True, bos_token="<bos>") == expect
    turns = [{"role": "system", "content": "Be brief."}, msgs[0], {"role": "assistant", "content": "two"}]
    for source in (family_tokenizer("llava").chat_template, LLAVA15_TEMPLATE):
        assert (compile_chat_template(source).render(messages=turns, add_generation_prompt=False)
                == "Be brief.\nUSER: <__media__>hi\nASSISTANT: two</s>\n")


def test_same_seed_same_bytes_other_seed_other_bytes_and_cache(tmp_path):
    a = write_pair("llava", "tiny", tmp_path / "a", seed=1)
    b = write_pair("llava", "tiny", tmp_path / "b", seed=1)
    c = write_pair("llava", "tiny", tmp_path / "c", seed=2)
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))
    assert a[0].read_bytes() != c[0].read_bytes() and a[1].read_bytes() != c[1].read_bytes()
    # cache: same call does not rewrite; another seed into the same directory does
    mtimes = [p.stat().st_mtime_ns for p in a]
    assert write_pair("llava", "tiny", tmp_path / "a", seed=1) == a
    assert [p.stat().st_mtime_ns for p in a] == mtimes
    fp1 = read_fingerprint(a[0])
    write_pair("llava", "tiny", tmp_path / "a", seed=2)
    assert read_fingerprint(a[0]) != fp1 and a[0].read_bytes() == c[0].read_bytes()
    a[1].write_bytes(b"truncated")
    write_pair("llava", "tiny", tmp_path / "a", seed=2)
    assert a[1].read_bytes() == c[1].read_bytes()


def test_demo_image_is_deterministic():
    a, b, c = demo_image((120, 80), seed=5), demo_image((120, 80), seed=5), demo_image((120, 80), seed=6)
    assert a.size == (120, 80) and a.mode == "RGB"
    assert a.tobytes() == b.tobytes() and a.tobytes() != c.tobytes()
    assert len(set(np.asarray(a).reshape(-1, 3).view("u1,u1,u1").ravel().tolist())) > 5


def test_large_presets_stream_the_same_weights_every_time(tmp_path):
    """Presets above the streaming threshold are generated tensor by tensor from the name: reproducible,
    never held whole; the written file holds exactly what the mapping gives."""
    import gguf
    from topv_edge.lab.synth import LazyRandomWeights, TextConfig, write_text_model

    cfg = TextConfig(n_embd=64, n_ff=96, n_layer=2, n_head=4, n_head_kv=2)
    tok = family_tokenizer("llava")
    shapes = text_weight_shapes(cfg, len(tok.tokens))
    a, b = LazyRandomWeights(shapes, 7), LazyRandomWeights(shapes, 7)
    assert set(a) == set(shapes) and np.array_equal(a["blk.1.ffn_up.weight"], b["blk.1.ffn_up.weight"])
    assert not np.array_equal(a["blk.1.ffn_up.weight"], LazyRandomWeights(shapes, 8)["blk.1.ffn_up.weight"])
    path = write_text_model(tmp_path / "lazy.gguf", cfg, tok, a, dtype="f16")
    t = {x.name: x for x in gguf.GGUFReader(str(path)).tensors}
    assert t["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    np.testing.assert_array_equal(np.asarray(t["blk.0.attn_q.weight"].data), a["blk.0.attn_q.weight"].astype(np.float16))
    assert t["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32


def test_realistic_presets_have_the_real_shapes():
    """The 4b presets carry the published hyperparameters (Qwen3-VL-4B-Instruct, Gemma-3-4B-it)."""
    q = PRESETS[("qwen3vl", "4b")]
    assert (q.text.n_embd, q.text.n_layer, q.text.n_head, q.text.n_head_kv, q.text.head_dim, q.text.n_ff) == \
        (2560, 36, 32, 8, 128, 9728)
    assert q.text.n_deepstack == len(q.vision.deepstack) == 3 and sum(q.text.rope_sections) == q.text.head_dim // 2
    assert (q.vision.n_embd, q.vision.n_layer, q.vision.patch_size, q.vision.pos_size) == (1024, 24, 16, 48)
    g = PRESETS[("gemma3", "4b")]
    assert (g.text.n_embd, g.text.n_layer, g.text.n_head, g.text.n_head_kv, g.text.head_dim, g.text.n_ff) == \
        (2560, 34, 8, 4, 256, 10240)
    assert (g.vision.n_embd, g.vision.n_layer, g.vision.image_size, g.vision.n_image_tokens()) == (1152, 27, 896, 256)


def test_cli_prints_the_two_paths(tmp_path, capsys):
    from topv_edge.lab.synth import main

    assert main(["--family", "gemma3", "--preset", "tiny", "-o", str(tmp_path), "--seed", "3"]) == 0
    out = capsys.readouterr().out.split()
    assert out == [str(tmp_path / "gemma3-tiny.gguf"), str(tmp_path / "mmproj-gemma3-tiny.gguf")]
    with pytest.raises(SystemExit):
        main(["--family", "gemma3", "--preset", "nope", "-o", str(tmp_path)])


def test_writer_checks_given_weights(tmp_path):
    from topv_edge.lab.synth import write_text_model

    cfg = PRESETS[("llava", "tiny")].text
    tok = family_tokenizer("llava")
    shapes = text_weight_shapes(cfg, len(tok.tokens))
    weights = {n: np.zeros(s, np.float32) for n, s in shapes.items()}
    del weights["output.weight"]
    with pytest.raises(ValueError, match="missing weights"):
        write_text_model(tmp_path / "m.gguf", cfg, tok, weights)
    weights["output.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match="has shape"):
        write_text_model(tmp_path / "m.gguf", cfg, tok, weights)


def test_given_weights_round_trip(tmp_path):
    """Given (e.g. trained, float64) weights land in the file as float32 with ggml's reversed shape."""
    import gguf
    from topv_edge.lab.synth import random_weights, write_text_model

    cfg = PRESETS[("llava", "tiny")].text
    tok = family_tokenizer("llava")
    w = {k: v.astype(np.float64) for k, v in random_weights(text_weight_shapes(cfg, len(tok.tokens)),
                                                            np.random.default_rng(0)).items()}
    path = write_text_model(tmp_path / "m.gguf", cfg, tok, w)
    t = {x.name: x for x in gguf.GGUFReader(str(path)).tensors}
    q = t["blk.0.attn_q.weight"]
    assert q.tensor_type == gguf.GGMLQuantizationType.F32 and list(q.shape) == [cfg.n_embd, cfg.n_embd]
    np.testing.assert_array_equal(np.asarray(q.data), w["blk.0.attn_q.weight"].astype(np.float32))
