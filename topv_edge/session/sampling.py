"""Sampling the answer: llama.cpp's sampler chain, and token pieces as bytes or text."""

from __future__ import annotations

import ctypes
from typing import Any


def make_sampler(L: Any, temp: float, seed: int) -> Any:
    """Greedy at temp 0, else top-k 40, top-p 0.95, min-p 0.05, temperature and a seeded draw (llama.cpp's
    defaults)."""
    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    if temp == 0:
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
    else:
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_k(40))
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(0.95, 1))
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_min_p(0.05, 1))
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(temp))
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(seed & 0xFFFFFFFF))
    return chain


def token_bytes(L: Any, vocab: Any, tok: int) -> bytes:
    """The token's piece as bytes (a piece may end inside a UTF-8 character), special tokens as nothing."""
    buf = ctypes.create_string_buffer(256)
    n = L.llama_token_to_piece(vocab, tok, buf, len(buf), 0, False)
    return buf.raw[: max(n, 0)]


def token_text(L: Any, vocab: Any, tok: int) -> str:
    """The token's text, special tokens included ("" for -1, a vocabulary without it)."""
    if tok < 0:
        return ""
    buf = ctypes.create_string_buffer(256)
    n = L.llama_token_to_piece(vocab, tok, buf, len(buf), 0, True)
    return buf.raw[: max(n, 0)].decode("utf-8", "replace")
