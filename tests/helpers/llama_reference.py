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


class ClipReference:
    """A float64 numpy forward of LLaVA-1.5's vision side as HF transformers computes it (CLIPVisionModel +
    LlavaMultiModalProjector), from the HF-layout weights of `topv_edge.lab.synth.pair_weights` (all of the
    ViT's blocks, Linear weights [out, in]): the oracle for llama.cpp's CLIP encoder.

    HF order: the class embedding first, then the patches in raster order; position i + 1 for patch i;
    pre-layernorm; `hidden_states[select_layer]` (LLaVA-1.5: -2, the output of the penultimate block);
    the class token dropped ("default" feature select strategy); mm.0, GELU (erf), mm.2."""

    def __init__(self, cfg, weights, select_layer: int = -2) -> None:
        self.cfg = cfg
        self.w = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
        self.n_blocks = cfg.n_layer + 1 + select_layer  # hidden_states has n_layer + 1 entries

    def pixels(self, image) -> np.ndarray:
        """(3, H, W) normalised pixels of an RGB picture of exactly image_size x image_size."""
        a = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
        assert a.shape[:2] == (self.cfg.image_size, self.cfg.image_size), a.shape
        return ((a - np.array(self.cfg.image_mean)) / np.array(self.cfg.image_std)).transpose(2, 0, 1)

    @staticmethod
    def _ln(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w + b

    def _act(self, x: np.ndarray) -> np.ndarray:
        if self.cfg.hidden_act == "quick_gelu":
            return x / (1.0 + np.exp(-1.702 * x))
        return _gelu(x)

    def hidden_states(self, image, order: str = "hf") -> np.ndarray:
        """The encoder's `hidden_states[select_layer]`: (1 + n_patches, n_embd) if there is a class token.

        order "unpatched" simulates llama.cpp's graph before patches/10: the class token appended after the
        patches while the position table is still added row by row (row 0, the class token's, to patch 0)."""
        c, w = self.cfg, self.w
        p, g = c.patch_size, c.grid
        x = self.pixels(image)
        patches = x.reshape(3, g, p, g, p).transpose(1, 3, 0, 2, 4).reshape(g * g, 3 * p * p)  # raster order
        h = patches @ w["v.patch_embd.weight"].reshape(c.n_embd, -1).T
        if "v.patch_embd.bias" in w:
            h = h + w["v.patch_embd.bias"]
        if c.class_embedding:
            cls = w["v.class_embd"][None, :]
            h = np.concatenate([cls, h] if order == "hf" else [h, cls])
        h = h + w["v.position_embd.weight"][: len(h)]
        h = self._ln(h, w["v.pre_ln.weight"], w["v.pre_ln.bias"], c.ln_eps)
        n, dh = len(h), c.n_embd // c.n_head
        for i in range(self.n_blocks):
            b = lambda t: w[f"v.blk.{i}.{t}"]  # noqa: E731
            y = self._ln(h, b("ln1.weight"), b("ln1.bias"), c.ln_eps)
            q, k, v = ((y @ b(f"attn_{t}.weight").T + b(f"attn_{t}.bias")).reshape(n, c.n_head, dh) for t in "qkv")
            att = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(dh)
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            h = h + np.einsum("hqk,khd->qhd", att, v).reshape(n, -1) @ b("attn_out.weight").T + b("attn_out.bias")
            y = self._ln(h, b("ln2.weight"), b("ln2.bias"), c.ln_eps)
            y = self._act(y @ b("ffn_up.weight").T + b("ffn_up.bias"))
            h = h + y @ b("ffn_down.weight").T + b("ffn_down.bias")
        return h

    def image_tokens(self, image, order: str = "hf") -> np.ndarray:
        """What the LLM receives: (n_patches, n_embd_text), one row per patch in raster order (order
        "unpatched": rows 1..N of the unpatched graph, i.e. patches 1..N-1 and the class token last)."""
        h = self.hidden_states(image, order)[1 if self.cfg.class_embedding else 0:]
        w = self.w
        y = _gelu(h @ w["mm.0.weight"].T + w["mm.0.bias"])
        return y @ w["mm.2.weight"].T + w["mm.2.bias"]


def _gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, as HF's "gelu"."""
    from math import erf

    return 0.5 * x * (1.0 + np.vectorize(erf)(x / np.sqrt(2.0)))
