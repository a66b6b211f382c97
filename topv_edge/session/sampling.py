"""Sampling the answer: llama.cpp's sampler chain, and token pieces as bytes or text."""

from __future__ import annotations

import ctypes
from typing import Any

from ..options import DEFAULT_MIN_P, DEFAULT_TOP_K, DEFAULT_TOP_P


def make_sampler(L: Any, temp: float, seed: int, top_k: int = DEFAULT_TOP_K, top_p: float = DEFAULT_TOP_P,
                 min_p: float = DEFAULT_MIN_P) -> Any:
    """Greedy at temp 0, else top-k, top-p, min-p, temperature and a seeded draw, in llama.cpp's order (its
    default sampler chain; top_k 0, top_p 1 and min_p 0 are no-ops there as here)."""
    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    if temp == 0:
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
    else:
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_k(top_k))
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(top_p, 1))
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_min_p(min_p, 1))
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
