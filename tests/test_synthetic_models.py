"""The project's GGUF writer: deterministic files that llama.cpp loads with the expected image tokens."""

from __future__ import annotations

import numpy as np
import pytest

from topv_edge.runtime import TopVOptions, VisionChat
from topv_edge.synthetic import PRESETS, text_weight_shapes, family_tokenizer, write_pair

from conftest import FAMILIES


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = write_pair("llava", "tiny", tmp_path / "a", seed=1)
    b = write_pair("llava", "tiny", tmp_path / "b", seed=1)
    c = write_pair("llava", "tiny", tmp_path / "c", seed=2)
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))
    assert a[0].read_bytes() != c[0].read_bytes()


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_pairs_load_and_give_the_expected_image_tokens(models_dir, picture, libs, family):
    cfg = PRESETS[(family, "tiny")]
    with VisionChat(models_dir / f"{family}-tiny.gguf", topv=TopVOptions(enabled=False), threads=2) as chat:
        (image,), _, _ = chat.add_user_message("Describe it.", [picture])
        logits = chat.logits()
    if family == "llava":  # fixed size: (112 / 14)^2
        assert image.n_tokens == cfg.vision.n_image_tokens() == 64
    elif family == "gemma3":  # fixed size, 2 x 2 average pooling: (112 / 14 / 2)^2
        assert image.n_tokens == cfg.vision.n_image_tokens() == 16
    else:  # Qwen2-VL resizes within its pixel budget: 336 x 336 -> 24 x 24 patches -> 12 x 12 merged tokens
        assert image.n_tokens == 144
    assert np.all(np.isfinite(logits)) and np.std(logits) > 0.1


def test_writer_checks_given_weights(tmp_path):
    from topv_edge.synthetic import write_text_model

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
