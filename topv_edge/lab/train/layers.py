"""The PyTorch pieces both trained VLMs are built of, computing what llama.cpp computes for their GGUF pair:
ViT blocks (clip.cpp), llama-style text blocks (RMSNorm, RoPE given by the model, SwiGLU) and the VLM that
puts the image embeddings among the text embeddings. Attribute names are the GGUF mapping's (gguf_io.py)."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import synth as S

Rope = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x (B, L, h, hd), positions) -> rotated x


def gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")  # ggml_gelu


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"gelu": gelu, "quick_gelu": quick_gelu}


def rotate_neox(x: torch.Tensor, ang: torch.Tensor) -> torch.Tensor:
    """NEOX-style rotation of pairs (i, i + d/2) by ang (..., d/2)."""
    h = x.shape[-1] // 2
    c, s = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), -1)


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class VBlock(nn.Module):
    """A pre-norm ViT block: q/k/v/out biases, no mask, FFN up -> activation -> down; rope: applied to q
    and k per head (None: a position table outside the block)."""

    def __init__(self, cfg: S.VisionConfig, rope: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        super().__init__()
        d = cfg.n_embd
        self.n_head, self.rope, self.act = cfg.n_head, rope, ACTIVATIONS[cfg.hidden_act]
        self.ln1 = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln2 = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.up, self.down = nn.Linear(d, cfg.n_ff), nn.Linear(cfg.n_ff, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, d = x.shape
        h, hd = self.n_head, d // self.n_head
        y = self.ln1(x)
        q, k = self.q(y).view(B, N, h, hd), self.k(y).view(B, N, h, hd)
        if self.rope is not None:
            q, k = self.rope(q), self.rope(k)
        v = self.v(y).view(B, N, h, hd).transpose(1, 2)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v)
        x = x + self.o(a.transpose(1, 2).reshape(B, N, d))
        return x + self.down(self.act(self.up(self.ln2(x))))


class TBlock(nn.Module):
    """A text block: RMSNorm, attention with the model's RoPE (q/k/v biases for qwen2vl), SwiGLU FFN.
    keep_qk: keep (q, k, v) of the last forward for the binding and read-out losses (training only)."""

    def __init__(self, cfg: S.TextConfig, rope: Rope) -> None:
        super().__init__()
        e, hd = cfg.n_embd, cfg.head_dim
        bias = cfg.arch == "qwen2vl"
        self.cfg, self.rope = cfg, rope
        self.attn_norm = RMSNorm(e, cfg.rms_eps)
        self.q = nn.Linear(e, cfg.n_head * hd, bias=bias)
        self.k = nn.Linear(e, cfg.n_head_kv * hd, bias=bias)
        self.v = nn.Linear(e, cfg.n_head_kv * hd, bias=bias)
        self.o = nn.Linear(cfg.n_head * hd, e, bias=False)
        self.ffn_norm = RMSNorm(e, cfg.rms_eps)
        self.gate = nn.Linear(e, cfg.n_ff, bias=False)
        self.up = nn.Linear(e, cfg.n_ff, bias=False)
        self.down = nn.Linear(cfg.n_ff, e, bias=False)
        self.keep_qk, self.qk = False, None

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L, e = x.shape
        h, kvh, hd = self.cfg.n_head, self.cfg.n_head_kv, self.cfg.head_dim
        y = self.attn_norm(x)
        q = self.rope(self.q(y).view(B, L, h, hd).transpose(1, 2), pos)
        k = self.rope(self.k(y).view(B, L, kvh, hd).transpose(1, 2), pos)
        v = self.v(y).view(B, L, kvh, hd).transpose(1, 2)
        if kvh != h:
            k, v = k.repeat_interleave(h // kvh, 1), v.repeat_interleave(h // kvh, 1)
        if self.keep_qk:
            self.qk = (q, k, v)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.o(a.transpose(1, 2).reshape(B, L, e))
        y = self.ffn_norm(x)
        return x + self.down(F.silu(self.gate(y)) * self.up(y))


class VLM(nn.Module):
    """vision (pixels -> image embeddings), the text model and the training-only heads `aux` (not exported),
    registered in this order (the order fixes what a torch seed initialises)."""

    def __init__(self, vision: nn.Module, cfg: S.TextConfig, rope: Rope, n_vocab: int,
                 aux: Callable[[], dict[str, nn.Module]]) -> None:
        super().__init__()
        self.vision = vision
        self.tok_emb = nn.Embedding(n_vocab, cfg.n_embd)
        self.blocks = nn.ModuleList(TBlock(cfg, rope) for _ in range(cfg.n_layer))
        self.out_norm = RMSNorm(cfg.n_embd, cfg.rms_eps)
        self.out = nn.Linear(cfg.n_embd, n_vocab, bias=False)
        for name, m in aux().items():
            setattr(self, name, m)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def text(self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, probe: list | None = None) -> torch.Tensor:
        """The final-normed hidden states; probe: gets the hidden states after layer 0."""
        for i, blk in enumerate(self.blocks):
            x = blk(x, pos, mask)
            if probe is not None and i == 0:
                probe.append(x)
        return self.out_norm(x)


def random_init(model: nn.Module, seed: int) -> None:
    """Larger random weights than training's init (std 0.02), for the untrained-model check: with them
    every part of the forward (rope, norms, merger order, biases) moves the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
            elif n.endswith("weight") and ("norm" in n or "ln" in n):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
