"""A float64 numpy forward of a `llama`-architecture GGUF (the tiny generated ones): the oracle for
position handling. Input embeddings at arbitrary increasing positions -> logits of every token."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class LlamaReference:
    def __init__(self, path: str | Path) -> None:
        import gguf

        r = gguf.GGUFReader(str(path))
        arch = r.get_field("general.architecture").contents()
        assert arch == "llama", arch
        kv = {f: r.get_field(f"llama.{f}").contents() for f in (
            "embedding_length", "block_count", "attention.head_count", "attention.head_count_kv",
            "attention.layer_norm_rms_epsilon", "rope.freq_base")}
        self.n_embd, self.n_layer = kv["embedding_length"], kv["block_count"]
        self.n_head, self.n_head_kv = kv["attention.head_count"], kv["attention.head_count_kv"]
        self.eps, self.base = kv["attention.layer_norm_rms_epsilon"], kv["rope.freq_base"]
        self.w = {t.name: np.array(t.data, dtype=np.float64) for t in r.tensors}

    def embed(self, tokens: list[int]) -> np.ndarray:
        return self.w["token_embd.weight"][tokens]

    def _rms(self, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * w

    def _rope(self, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
        # llama.cpp's "normal" RoPE: rotate adjacent pairs (x[2i], x[2i+1]) by pos * base^(-2i/d)
        hd = x.shape[-1]
        theta = pos[:, None] * self.base ** (-np.arange(0, hd, 2) / hd)  # (n, hd/2)
        c, s = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = x0 * c - x1 * s
        out[..., 1::2] = x0 * s + x1 * c
        return out

    def forward(self, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """x: (n, n_embd) input embeddings in sequence order; pos: (n,) strictly increasing positions."""
        assert np.all(np.diff(pos) > 0)
        n, hd = len(x), self.n_embd // self.n_head
        group = self.n_head // self.n_head_kv
        mask = np.where(pos[None, :] <= pos[:, None], 0.0, -np.inf)
        for i in range(self.n_layer):
            w = lambda name: self.w[f"blk.{i}.{name}.weight"]  # noqa: E731
            h = self._rms(x, w("attn_norm"))
            q = self._rope((h @ w("attn_q").T).reshape(n, self.n_head, hd), pos)
            k = self._rope((h @ w("attn_k").T).reshape(n, self.n_head_kv, hd), pos)
            v = (h @ w("attn_v").T).reshape(n, self.n_head_kv, hd)
            k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
            att = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            x = x + np.einsum("hqk,khd->qhd", att, v).reshape(n, -1) @ w("attn_output").T
            h = self._rms(x, w("ffn_norm"))
            g = h @ w("ffn_gate").T
            x = x + ((g / (1 + np.exp(-g))) * (h @ w("ffn_up").T)) @ w("ffn_down").T
        return self._rms(x, self.w["output_norm.weight"]) @ self.w["output.weight"].T
