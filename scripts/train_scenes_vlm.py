#!/usr/bin/env python3
"""Train, evaluate, export and verify the second demo VLM: a small Qwen2-VL-style model (text arch
`qwen2vl` with M-RoPE, mmproj `qwen2vl_merger` with 2-D RoPE ViT and 2 x 2 patch merger) trained on
topv_edge.lab.data.scenes. Model card: docs/demo_model2.md.

    python scripts/train_scenes_vlm.py train  [--steps 2000] [--resume] [--stop-at N] ...   # build/scenes_vlm/
    python scripts/train_scenes_vlm.py eval   [--n 600] [--seed 1]                           # PyTorch, greedy
    python scripts/train_scenes_vlm.py export [-o topv_edge/lab/models/scenes] [--random]          # the GGUF pair
    python scripts/train_scenes_vlm.py verify [-o topv_edge/lab/models/scenes] [--n 200]           # PyTorch vs llama.cpp
    python scripts/train_scenes_vlm.py llama-eval [--n 600 --seed 2]                         # accuracy via llama.cpp

`export --random` writes the untrained model (the check that the PyTorch forward is llama.cpp's before
any training: `verify --random`).

The shipped model (36 minutes on the shared 2-core machine; docs/demo_model2.md):

    python scripts/train_scenes_vlm.py train --steps 2000 --lr 1.5e-3 --eval-every 250 --target 0.96 --stop-at 600
    python scripts/train_scenes_vlm.py train --resume --steps 2000 --lr 1.5e-3 --eval-every 250 --target 0.96 --kind-weight left=3,above=3

What the PyTorch model computes is what llama.cpp computes for such a pair (pinned commit 0c1e57098bba):
- vision (clip.cpp `clip_graph_qwen2vl`): two conv patch kernels without bias, summed (one trained
  kernel, the other written as zeros); patches reordered so that each 2 x 2 block is consecutive
  ((block row, block column, dy, dx)); no position table; pre-norm blocks (LayerNorm eps 1e-6,
  q/k/v/out biases, 2-D RoPE "vision" mode: head dims split in halves rotated by row and column,
  frequencies 10000^(-k / (d_head/4)) within each half, pairs (i, i + d_head/2); no mask; FFN up ->
  quick GELU x*sigmoid(1.702x) -> down); `v.post_ln` LayerNorm; merger: 4 consecutive tokens
  concatenated -> mm.0 -> GELU (tanh) -> mm.2;
- preprocessing: 224 x 224 pictures are used as they are (the Qwen resize keeps a size that is a
  multiple of 28 within the pixel limits), pixel / 255, CLIP mean/std;
- text (`qwen2vl`): RMSNorm eps 1e-6, q/k/v biases, M-RoPE NEOX-style (pairs (i, i + d/2)), pair i
  rotated by position section(i) * base^(-2i/d), sections (t, h, w) = SECTIONS; SwiGLU, untied
  output; attention causal in sequence order (llama.cpp masks image tokens of equal t by raster order,
  which is the sequence order);
- positions (mtmd M-RoPE): the n0 text tokens before the image at 0..n0-1 (all sections equal); image
  token (r, c) at t = n0, h = n0 + r, w = n0 + c; the text after the image from n0 + max(rows, cols).
Prompt (ChatML, the template the GGUF carries): "<|im_start|>user\\n<|vision_start|>" + 64 image
embeddings + "<|vision_end|>{question}<|im_end|>\\n<|im_start|>assistant\\n", answer " {word}<|im_end|>".

Training reuses the first demo model's recipe (scripts/train_demo_vlm.py): several questions about a
picture packed as independent branches, a ViT warm-up on per-token heads, a binding loss (heads of layer
BIND_LAYER at the answer position pulled to the named objects' tokens) and a read-out loss (what those
heads read must tell the named object's colour, shape, character and position). A per-token probe on the
image tokens after text layer 0 asks for their row and column, which the ViT cannot know (no position
table, relative RoPE only) and the text model gets from M-RoPE: the left/above questions need it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from topv_edge.lab.data import scenes as D  # noqa: E402  (imports topv_edge first: the patched llama.cpp)
from topv_edge.lab import synth as S  # noqa: E402
from topv_edge.session.templates import CHATML_TEMPLATE, compile_chat_template  # noqa: E402
import train_demo_vlm as T1  # noqa: E402  (the first demo model's script: llama.cpp side, tokenizer, schedule)

OUT_DIR = REPO / "build" / "scenes_vlm"
MODEL_DIR = REPO / "topv_edge" / "lab" / "models" / "scenes"
MODEL_NAME, MMPROJ_NAME = "scenes-vlm.gguf", "mmproj-scenes-vlm.gguf"
TRAIN_SEED_BASE = 1000
VIT_SEED_BASE = 10 ** 6
VAL_SEED, TEST_SEED = 1, 2
BIND_LAYER = 1
HEAD_A, HEAD_B = 0, 1             # binding heads: the first named object (or the box), the second / count
SPECIALS = ["<|endoftext|>", "<|im_end|>", "<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]
IMG_BEG, IMG_END = "<|vision_start|>", "<|vision_end|>"


@dataclass(frozen=True)
class Config:
    # text (qwen2vl)
    n_embd: int = 192
    n_ff: int = 512
    n_layer: int = 4
    n_head: int = 4
    n_head_kv: int = 4
    # a small base: with 10000 the column section (the last, lowest frequencies) turns by < 0.003 rad per
    # column and the text model can hardly tell columns apart; with 50 it turns by 0.02 - 0.1 rad
    rope_base: float = 50.0
    rms_eps: float = 1e-6
    sections: tuple[int, int, int, int] = (4, 10, 10, 0)   # pairs of head dims for t, h, w (sum = head_dim / 2)
    # vision (qwen2vl_merger)
    image_size: int = D.IMAGE_SIZE
    patch_size: int = D.PATCH_SIZE
    v_embd: int = 96
    v_ff: int = 384
    v_layer: int = 3
    v_head: int = 4
    ln_eps: float = 1e-6

    def text_config(self) -> "S.TextConfig":
        return S.TextConfig(arch="qwen2vl", n_embd=self.n_embd, n_ff=self.n_ff, n_layer=self.n_layer,
                            n_head=self.n_head, n_head_kv=self.n_head_kv, rope_base=self.rope_base,
                            rms_eps=self.rms_eps, n_ctx_train=2048, rope_sections=tuple(self.sections))

    def vision_config(self) -> "S.VisionConfig":
        return S.VisionConfig(projector="qwen2vl_merger", image_size=self.image_size, patch_size=self.patch_size,
                              n_embd=self.v_embd, n_ff=self.v_ff, n_layer=self.v_layer, n_head=self.v_head,
                              ln_eps=self.ln_eps, spatial_merge=D.MERGE, image_mean=T1.CLIP_MEAN,
                              image_std=T1.CLIP_STD, hidden_act="quick_gelu")  # Qwen2-VL's ViT activation


# ----------------------------------------------------------------------------------------------------
# tokenizer: as the first model's (T1.Tok), with Qwen2-VL's special tokens and ChatML; mtmd wraps the
# image in <|vision_start|> ... <|vision_end|>, which the prompt pieces include


class Tok(T1.Tok):
    def __init__(self, workdir: Path) -> None:  # noqa: D107 - T1.Tok's, with this model's vocabulary
        self.spec = S.make_tokenizer(SPECIALS, CHATML_TEMPLATE, n_merges=1000, corpus=" ".join(D.VOCAB_WORDS))
        path = workdir / "vocab.gguf"
        workdir.mkdir(parents=True, exist_ok=True)
        tcfg = S.TextConfig(n_embd=8, n_ff=16, n_layer=1, n_head=1, n_head_kv=1)
        w = S.random_weights(S.text_weight_shapes(tcfg, len(self.spec.tokens)), np.random.default_rng(0))
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        S.write_text_model(tmp, tcfg, self.spec, w, name="scenes-vlm vocab")
        tmp.replace(path)
        self.llm = T1.llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
        self.bos, self.eos = self.spec.bos, self.spec.eos
        self.n_vocab = len(self.spec.tokens)
        self._cache: dict[tuple[str, bool], list[int]] = {}
        self.template = compile_chat_template(self.spec.chat_template)
        self._u2b = {u: b for b, u in S._bytes_to_unicode().items()}

    def prefix(self) -> list[int]:  # qwen2vl GGUFs add no BOS
        return self.encode(T1.render_prompt(self.template, "").split(T1.MARKER)[0] + IMG_BEG)

    def question(self, q: str) -> list[int]:
        return self.encode(IMG_END + T1.render_prompt(self.template, q).split(T1.MARKER)[1])

    def decode(self, ids: list[int]) -> str:
        return super().decode([i for i in ids if self.spec.types[i] != 3])


# ----------------------------------------------------------------------------------------------------
# the model (torch)


def build_model(cfg: Config, fp16_activations: bool = False):
    """The model class; fp16_activations: GELU and quick GELU of inputs rounded to f16 and outputs rounded
    to f16, as ggml's CPU lookup tables compute them (for checking the match; training uses exact ones)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    def r16(x):
        return x.half().float() if fp16_activations else x

    g_patch = cfg.image_size // cfg.patch_size       # 16 x 16 patches
    g_tok = g_patch // D.MERGE                        # 8 x 8 image tokens

    def quick_gelu(x):
        x = r16(x)
        return r16(x * torch.sigmoid(1.702 * x))

    def gelu(x):
        return torch.where(x.abs() >= 10, (x > 0) * x, r16(F.gelu(r16(x), approximate="tanh")))

    def rotate(x, ang):
        # NEOX-style rotation of pairs (i, i + d/2) by ang (..., d/2)
        h = x.shape[-1] // 2
        c, s = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
        x1, x2 = x[..., :h], x[..., h:]
        return torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), -1)

    # ViT patch order (block row, block column, dy, dx) and each patch's (row, column)
    yb, xb, dy, dx = np.meshgrid(np.arange(g_tok), np.arange(g_tok), [0, 1], [0, 1], indexing="ij")
    v_rows = torch.tensor((2 * yb + dy).reshape(-1), dtype=torch.float64)
    v_cols = torch.tensor((2 * xb + dx).reshape(-1), dtype=torch.float64)
    vd = cfg.v_embd // cfg.v_head
    q4 = vd // 4
    v_inv = 10000.0 ** (-torch.arange(q4, dtype=torch.float64) / q4)
    v_ang = torch.cat((v_rows[:, None] * v_inv, v_cols[:, None] * v_inv), 1)  # (256, vd/2)

    hd = cfg.n_embd // cfg.n_head
    sec = np.repeat([0, 1, 2, 3], cfg.sections)[: hd // 2]
    t_sec = torch.tensor(sec, dtype=torch.long)
    t_inv = cfg.rope_base ** (-2.0 * torch.arange(hd // 2, dtype=torch.float64) / hd)

    class VBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            d = cfg.v_embd
            self.ln1 = nn.LayerNorm(d, eps=cfg.ln_eps)
            self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
            self.ln2 = nn.LayerNorm(d, eps=cfg.ln_eps)
            self.up, self.down = nn.Linear(d, cfg.v_ff), nn.Linear(cfg.v_ff, d)

        def forward(self, x):
            B, N, d = x.shape
            y = self.ln1(x)
            q = rotate(self.q(y).view(B, N, cfg.v_head, vd), v_ang[:, None]).transpose(1, 2)
            k = rotate(self.k(y).view(B, N, cfg.v_head, vd), v_ang[:, None]).transpose(1, 2)
            v = self.v(y).view(B, N, cfg.v_head, vd).transpose(1, 2)
            a = F.scaled_dot_product_attention(q, k, v)
            x = x + self.o(a.transpose(1, 2).reshape(B, N, d))
            return x + self.down(quick_gelu(self.up(self.ln2(x))))

    class Vision(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            d = cfg.v_embd
            self.patch = nn.Conv2d(3, d, cfg.patch_size, stride=cfg.patch_size, bias=False)
            self.blocks = nn.ModuleList(VBlock() for _ in range(cfg.v_layer))
            self.post_ln = nn.LayerNorm(d, eps=cfg.ln_eps)
            self.mm0 = nn.Linear(4 * d, 4 * d)
            self.mm2 = nn.Linear(4 * d, cfg.n_embd)

        def forward(self, pix):
            x = self.patch(pix)                                   # (B, d, 16, 16)
            B, d = x.shape[:2]
            x = x.view(B, d, g_tok, 2, g_tok, 2).permute(0, 2, 4, 3, 5, 1).reshape(B, g_patch * g_patch, d)
            for blk in self.blocks:
                x = blk(x)
            x = self.post_ln(x).reshape(B, g_tok * g_tok, 4 * d)  # 4 consecutive patches = one token
            return self.mm2(gelu(self.mm0(x)))

    class RMSNorm(nn.Module):
        def __init__(self, d: int) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(d))

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.rms_eps) * self.weight

    def mrope(x, pos3):
        # x (B, h, L, hd), pos3 (B, L, 3): pair i rotated by pos3[..., section(i)] * base^(-2i/hd)
        p = pos3.to(torch.float64)[..., t_sec.clamp(max=2)]       # (B, L, hd/2)
        return rotate(x, (p * t_inv)[:, None])

    class TBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            e = cfg.n_embd
            self.attn_norm = RMSNorm(e)
            self.q = nn.Linear(e, cfg.n_head * hd)
            self.k = nn.Linear(e, cfg.n_head_kv * hd)
            self.v = nn.Linear(e, cfg.n_head_kv * hd)
            self.o = nn.Linear(cfg.n_head * hd, e, bias=False)
            self.ffn_norm = RMSNorm(e)
            self.gate = nn.Linear(e, cfg.n_ff, bias=False)
            self.up = nn.Linear(e, cfg.n_ff, bias=False)
            self.down = nn.Linear(cfg.n_ff, e, bias=False)
            self.keep_qk, self.qk = False, None

        def forward(self, x, pos3, mask):
            B, L, e = x.shape
            y = self.attn_norm(x)
            q = mrope(self.q(y).view(B, L, cfg.n_head, hd).transpose(1, 2), pos3)
            k = mrope(self.k(y).view(B, L, cfg.n_head_kv, hd).transpose(1, 2), pos3)
            v = self.v(y).view(B, L, cfg.n_head_kv, hd).transpose(1, 2)
            if cfg.n_head_kv != cfg.n_head:
                r = cfg.n_head // cfg.n_head_kv
                k, v = k.repeat_interleave(r, 1), v.repeat_interleave(r, 1)
            if self.keep_qk:
                self.qk = (q, k, v)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            x = x + self.o(a.transpose(1, 2).reshape(B, L, e))
            y = self.ffn_norm(x)
            return x + self.down(F.silu(self.gate(y)) * self.up(y))

    class VLM(nn.Module):
        def __init__(self, n_vocab: int) -> None:
            super().__init__()
            self.vision = Vision()
            self.tok_emb = nn.Embedding(n_vocab, cfg.n_embd)
            self.blocks = nn.ModuleList(TBlock() for _ in range(cfg.n_layer))
            self.out_norm = RMSNorm(cfg.n_embd)
            self.out = nn.Linear(cfg.n_embd, n_vocab, bias=False)
            # training-only heads (not exported): per image token, on the projector output ...
            self.aux_color = nn.Linear(cfg.n_embd, 1 + len(D.COLORS))
            self.aux_shape = nn.Linear(cfg.n_embd, 1 + len(D.SHAPES))
            self.aux_char = nn.Linear(cfg.n_embd, 1 + len(D.CHARS))
            # ... and on the image tokens after text layer 0 (their row and column) ...
            self.aux_row = nn.Linear(cfg.n_embd, g_tok)
            self.aux_col = nn.Linear(cfg.n_embd, g_tok)
            # ... and what the binding heads read at the answer position
            self.aux_read = nn.Linear(hd, len(D.COLORS) + len(D.SHAPES) + len(D.CHARS) + 2)
            self.aux_read_b = nn.Linear(hd, 2)
            self.apply(self._init)

        @staticmethod
        def _init(m) -> None:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)

        def text(self, x, pos3, mask, probe: list | None = None):
            for i, blk in enumerate(self.blocks):
                x = blk(x, pos3, mask)
                if probe is not None and i == 0:
                    probe.append(x)
            return self.out_norm(x)

    return VLM


def random_init(model, seed: int) -> None:
    """Larger random weights than training's init (std 0.02), for the untrained-model check: with them
    every part of the forward (rope, norms, merger order, biases) moves the logits."""
    import torch

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


def pixels(img) -> np.ndarray:
    """llama.cpp's preprocessing for this mmproj: (3, H, W) float32."""
    a = np.asarray(img.convert("RGB"), np.float32) / 255.0
    if a.shape[:2] != (D.IMAGE_SIZE, D.IMAGE_SIZE):
        raise ValueError(f"scenes pictures are {D.IMAGE_SIZE} x {D.IMAGE_SIZE}, got {a.shape[1]} x {a.shape[0]}")
    a = (a - np.array(T1.CLIP_MEAN, np.float32)) / np.array(T1.CLIP_STD, np.float32)
    return np.ascontiguousarray(a.transpose(2, 0, 1))


def image_positions(n0: int) -> np.ndarray:
    """(64, 3) M-RoPE positions (t, h, w) of the image tokens after n0 text tokens (mtmd's layout)."""
    r, c = np.divmod(np.arange(D.GRID * D.GRID), D.GRID)
    return np.stack([np.full_like(r, n0), n0 + r, n0 + c], 1)


def text_positions(start: int, n: int) -> np.ndarray:
    return np.repeat(np.arange(start, start + n)[:, None], 3, 1)


# ----------------------------------------------------------------------------------------------------
# batches


N_IMG = D.GRID * D.GRID


def bind_entry(kind: str, named: tuple, scene, n_prefix: int) -> list[tuple[int, np.ndarray]]:
    """(head, distribution over prefix + image tokens) targets of the binding loss for one question."""
    out = []
    if kind == "count":
        t = np.zeros(n_prefix + N_IMG, np.float32)
        t[0] = 1.0
        for o in scene.objects:
            t[n_prefix + (int(o.gy + o.size // 2) * D.GRID + int(o.gx + o.size // 2))] = 1.0
        out.append((HEAD_B, t / t.sum()))
    elif kind == "read":
        t = np.zeros(n_prefix + N_IMG, np.float32)
        t[n_prefix + scene.box[1] * D.GRID + scene.box[0]] = 1.0
        out.append((HEAD_A, t))
    else:
        for head, o in zip((HEAD_A, HEAD_B), named):
            t = np.zeros(n_prefix + N_IMG, np.float32)
            t[n_prefix + D.object_cells(o)] = 1.0
            out.append((head, t / t.sum()))
    return out


def read_targets(kind: str, named: tuple, scene) -> tuple[int, int, int, float, float, float, float]:
    """(colour, shape, character, A's x, A's y, B's x, B's y) the read-out probes predict; -1 / nan: none.
    Positions are object centres in cells / GRID."""
    nan = float("nan")
    if kind == "read":
        return -1, -1, D.CHARS.index(scene.box[2]), nan, nan, nan, nan
    if kind == "count":
        return -1, -1, -1, nan, nan, nan, nan
    a = named[0]
    ax, ay = a.cx / D.IMAGE_SIZE, a.cy / D.IMAGE_SIZE
    bx, by = (named[1].cx / D.IMAGE_SIZE, named[1].cy / D.IMAGE_SIZE) if len(named) > 1 else (nan, nan)
    return list(D.COLORS).index(a.color), D.SHAPES.index(a.shape), -1, ax, ay, bx, by


def make_train_batch(step: int, batch: int, k: int, tok: Tok, seed_base: int = TRAIN_SEED_BASE):
    """`batch` pictures with up to k questions each, packed as branches; all from the step's seed."""
    import torch

    prefix = tok.prefix()
    n0 = len(prefix)
    P = n0 + N_IMG
    q0 = n0 + max(D.GRID, D.GRID)             # first text position after the image
    rows, pix, labels = [], [], []
    for i in range(batch):
        rng = D.example_rng(seed_base + step, i)
        scene = D.make_scene(rng)
        img, mask = D.render(scene)
        pix.append(pixels(img))
        labels.append(D.cell_labels(scene, mask))
        rows.append([(tok.question(q), tok.answer(a), t, bind_entry(t, named, scene, n0), read_targets(t, named, scene))
                     for q, a, t, named in D.ask_many(scene, rng, k)])
    L = P + max(sum(len(q) + len(a) - 1 for q, a, *_ in br) for br in rows)
    ids = torch.zeros(batch, L, dtype=torch.long)
    pos3 = torch.zeros(batch, L, 3, dtype=torch.long)
    targets = torch.full((batch, L), -100, dtype=torch.long)
    kinds = torch.full((batch, L), -1, dtype=torch.long)
    mask = torch.zeros(batch, L, L, dtype=torch.bool)
    first, bind, read = [], [], []
    head_pos = torch.from_numpy(np.concatenate([text_positions(0, n0), image_positions(n0)]))
    for b, br in enumerate(rows):
        ids[b, :n0] = torch.tensor(prefix)
        pos3[b, :P] = head_pos
        mask[b, :P, :P] = torch.ones(P, P, dtype=torch.bool).tril()
        cur = P
        for qi, ai, t, bt, rt in br:
            seq = qi + ai[:-1]
            n = len(seq)
            ids[b, cur:cur + n] = torch.tensor(seq)
            pos3[b, cur:cur + n] = torch.from_numpy(text_positions(q0, n))
            targets[b, cur:cur + n] = torch.tensor([-100] * (len(qi) - 1) + ai)
            kinds[b, cur:cur + n] = D.KINDS.index(t)
            mask[b, cur:cur + n, :P] = True
            mask[b, cur:cur + n, cur:cur + n] = torch.ones(n, n, dtype=torch.bool).tril()
            at = cur + len(qi) - 1                # the position that predicts the answer
            first.append((b, at, ai[0], t))
            bind += [(b, at, h, d) for h, d in bt]
            read.append((b, at, *rt))
            cur += n
        if cur < L:
            idx = torch.arange(cur, L)
            mask[b, idx, idx] = True
    lab = {key: torch.from_numpy(np.stack([x[key] for x in labels])) for key in labels[0]}
    return {"pix": torch.from_numpy(np.stack(pix)), "ids": ids, "pos3": pos3, "targets": targets, "kinds": kinds,
            "mask": mask[:, None], "labels": lab, "first": first, "bind": bind, "read": read, "n_prefix": n0}


def token_aux_loss(model, img, lab):
    """Per image token: colour / shape of the covering object, the box's character (0: none); the object
    and box tokens weigh extra (most tokens are background)."""
    import torch.nn.functional as F

    loss = 0.0
    for key, head in (("color", model.aux_color), ("shape", model.aux_shape), ("char", model.aux_char)):
        logits, y = head(img), lab[key]
        loss = loss + F.cross_entropy(logits.flatten(0, 1), y.flatten())
        sel = y > 0
        if sel.any():
            loss = loss + 2.0 * F.cross_entropy(logits[sel], y[sel])
    return loss


def position_probe_loss(model, h0, n_prefix):
    """Row and column of each image token from its hidden state after text layer 0."""
    import torch
    import torch.nn.functional as F

    x = h0[:, n_prefix:n_prefix + N_IMG]
    r, c = np.divmod(np.arange(N_IMG), D.GRID)
    r = torch.from_numpy(r).expand(x.shape[0], -1)
    c = torch.from_numpy(c).expand(x.shape[0], -1)
    return (F.cross_entropy(model.aux_row(x).flatten(0, 1), r.flatten())
            + F.cross_entropy(model.aux_col(x).flatten(0, 1), c.flatten()))


def attention_at(model, entries, heads, n_keys):
    """Layer BIND_LAYER's attention logits at answer positions over the first n_keys tokens, and values."""
    import torch

    q, k, v = model.blocks[BIND_LAYER].qk
    bi = torch.tensor([x[0] for x in entries])
    ti = torch.tensor([x[1] for x in entries])
    hi = torch.tensor(heads)
    logits = torch.einsum("nd,nid->ni", q[bi, hi, ti], k[bi, hi, :n_keys]) / math.sqrt(q.shape[-1])
    return logits, v[bi, hi, :n_keys]


def binding_loss(model, batch):
    import torch

    if not batch["bind"]:
        return torch.zeros(())
    n_keys = batch["n_prefix"] + N_IMG
    logits, _ = attention_at(model, batch["bind"], [x[2] for x in batch["bind"]], n_keys)
    target = torch.from_numpy(np.stack([x[3] for x in batch["bind"]]))
    return -(target * torch.log_softmax(logits, -1)).sum(-1).mean()


def readout_loss(model, batch):
    """What heads HEAD_A and HEAD_B read at the answer position (attention times values) must tell the
    named object's colour, shape and centre, the box's character, and the second object's centre."""
    import torch
    import torch.nn.functional as F

    rd = [x for x in batch["read"] if x[2] >= 0 or x[4] >= 0]
    if not rd:
        return torch.zeros(())
    n_keys = batch["n_prefix"] + N_IMG
    loss = torch.zeros(())
    la, va = attention_at(model, rd, [HEAD_A] * len(rd), n_keys)
    out = model.aux_read(torch.einsum("ni,nid->nd", torch.softmax(la, -1), va))
    nc, ns, nch = len(D.COLORS), len(D.SHAPES), len(D.CHARS)
    col = torch.tensor([x[2] for x in rd])
    shp = torch.tensor([x[3] for x in rd])
    chr_ = torch.tensor([x[4] for x in rd])
    for sl, y in ((slice(0, nc), col), (slice(nc, nc + ns), shp), (slice(nc + ns, nc + ns + nch), chr_)):
        if (y >= 0).any():
            loss = loss + F.cross_entropy(out[:, sl][y >= 0], y[y >= 0])
    pa = torch.tensor([x[5:7] for x in rd], dtype=torch.float32)
    ok = ~torch.isnan(pa[:, 0])
    if ok.any():
        loss = loss + 20.0 * F.mse_loss(out[ok, -2:], pa[ok])
    pb = torch.tensor([x[7:9] for x in rd], dtype=torch.float32)
    ok = ~torch.isnan(pb[:, 0])
    if ok.any():
        lb, vb = attention_at(model, [x for x, o in zip(rd, ok.tolist()) if o], [HEAD_B] * int(ok.sum()), n_keys)
        outb = model.aux_read_b(torch.einsum("ni,nid->nd", torch.softmax(lb, -1), vb))
        loss = loss + 20.0 * F.mse_loss(outb, pb[ok])
    return loss


def forward_train(model, batch, kind_weights=None):
    import torch
    import torch.nn.functional as F

    img = model.vision(batch["pix"])
    x = model.tok_emb(batch["ids"])
    n0 = batch["n_prefix"]
    x = torch.cat([x[:, :n0], img, x[:, n0 + N_IMG:]], 1)
    model.blocks[BIND_LAYER].keep_qk = True
    probe: list = []
    h = model.text(x, batch["pos3"], batch["mask"], probe)
    bind, read = binding_loss(model, batch), readout_loss(model, batch)
    model.blocks[BIND_LAYER].keep_qk, model.blocks[BIND_LAYER].qk = False, None
    sel = batch["targets"] >= 0
    logits = model.out(h[sel])
    if kind_weights is None:
        loss = F.cross_entropy(logits, batch["targets"][sel])
    else:
        w = torch.tensor(kind_weights)[batch["kinds"][sel]]
        loss = (F.cross_entropy(logits, batch["targets"][sel], reduction="none") * w).sum() / w.sum()
    aux = token_aux_loss(model, img, batch["labels"]) + position_probe_loss(model, probe[0], n0)
    with torch.no_grad():
        bi = torch.tensor([f[0] for f in batch["first"]])
        ti = torch.tensor([f[1] for f in batch["first"]])
        ok = (model.out(h[bi, ti]).argmax(-1) == torch.tensor([f[2] for f in batch["first"]])).tolist()
    per_kind: dict[str, list[int]] = {}
    for f, o in zip(batch["first"], ok):
        c = per_kind.setdefault(f[3], [0, 0])
        c[0] += int(o)
        c[1] += 1
    return loss, aux, bind, read, per_kind


# ----------------------------------------------------------------------------------------------------
# greedy answers (PyTorch)


def greedy_answers(model, tok: Tok, images, questions, max_new: int = 3, batch: int = 32,
                   return_logits: bool = False):
    """Greedy decoding of single-question prompts; answers (and the first step's logits)."""
    import torch

    prefix = tok.prefix()
    n0 = len(prefix)
    q0 = n0 + D.GRID
    head_pos = torch.from_numpy(np.concatenate([text_positions(0, n0), image_positions(n0)]))
    answers, first_logits = [], []
    for s in range(0, len(images), batch):
        imgs, qs = images[s:s + batch], questions[s:s + batch]
        with torch.no_grad():
            emb = model.vision(torch.from_numpy(np.stack([pixels(i) for i in imgs])))
            seqs = [tok.question(q) for q in qs]
            gen: list[list[int]] = [[] for _ in qs]
            done = [False] * len(qs)
            for step in range(max_new):
                texts = [q + g for q, g in zip(seqs, gen)]
                Lt = max(len(t) for t in texts)
                ids = torch.zeros(len(qs), Lt, dtype=torch.long)
                for b, t in enumerate(texts):
                    ids[b, :len(t)] = torch.tensor(t)
                x = torch.cat([model.tok_emb(torch.tensor(prefix)).expand(len(qs), -1, -1), emb, model.tok_emb(ids)], 1)
                T = x.shape[1]
                pos3 = torch.cat([head_pos, torch.from_numpy(text_positions(q0, Lt))]).expand(len(qs), -1, -1)
                mask = torch.ones(T, T, dtype=torch.bool).tril()
                h = model.text(x, pos3, mask)
                last = torch.tensor([n0 + N_IMG + len(t) - 1 for t in texts])
                logits = model.out(h[torch.arange(len(qs)), last])
                if step == 0:
                    first_logits.append(logits.double().numpy().copy())
                for b, t in enumerate(logits.argmax(-1).tolist()):
                    if not done[b]:
                        if t == tok.eos:
                            done[b] = True
                        else:
                            gen[b].append(t)
                if all(done):
                    break
        answers += [tok.decode(g) for g in gen]
    if return_logits:
        return answers, np.concatenate(first_logits)
    return answers


def fmt_acc(acc: dict[str, tuple[int, int]]) -> str:
    keys = ["all"] + [t for t in D.KINDS if t in acc]
    return " ".join(f"{k}={acc[k][0] / max(acc[k][1], 1):.3f}" for k in keys)


def evaluate(model, tok: Tok, examples) -> dict[str, tuple[int, int]]:
    model.eval()
    preds = greedy_answers(model, tok, [e.image for e in examples], [e.question for e in examples])
    model.train()
    return D.accuracy_by_type([(e.qtype, e.answer, p) for e, p in zip(examples, preds)])


# ----------------------------------------------------------------------------------------------------
# train


def vision_warmup(model, args) -> None:
    """The ViT, merger and per-token heads alone first: the text model then starts from image tokens that
    already say colour, shape and character."""
    import torch

    params = [p for n, p in model.named_parameters() if n.startswith(("vision.", "aux_color", "aux_shape", "aux_char"))]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    t0 = time.time()
    for step in range(args.vit_steps):
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, (step + 1) / 25)
        pix, labels = [], []
        for i in range(args.vit_batch):
            scene = D.make_scene(D.example_rng(VIT_SEED_BASE + step, i))
            img, mask = D.render(scene)
            pix.append(pixels(img))
            labels.append(D.cell_labels(scene, mask))
        lab = {k: torch.from_numpy(np.stack([x[k] for x in labels])) for k in labels[0]}
        img = model.vision(torch.from_numpy(np.stack(pix)))
        loss = token_aux_loss(model, img, lab)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if (step + 1) % args.log_every == 0:
            with torch.no_grad():
                accs = []
                for key, head in (("color", model.aux_color), ("shape", model.aux_shape), ("char", model.aux_char)):
                    sel = lab[key] > 0
                    accs.append(f"{key} {(head(img)[sel].argmax(-1) == lab[key][sel]).float().mean().item():.3f}")
            print(f"vit step {step + 1} aux {loss.item():.4f} object tokens: {' '.join(accs)} "
                  f"elapsed {(time.time() - t0) / 60:.1f}min", flush=True)


def prefetch(steps, batch: int, k: int, tok: Tok):
    """make_train_batch of each step, drawn one step ahead in a forked worker (drawing and rendering the
    pictures is a quarter of a step's time)."""
    import torch

    class Steps(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(steps)

        def __getitem__(self, i: int):
            return make_train_batch(steps[i], batch, k, tok)

    loader = torch.utils.data.DataLoader(Steps(), batch_size=None, num_workers=1, prefetch_factor=2,
                                         multiprocessing_context="fork")
    return iter(loader)


def cmd_train(args) -> int:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = Config()
    tok = Tok(out)
    model = build_model(cfg)(tok.n_vocab)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-8)
    step, best = 0, -1.0
    ckpt = out / "ckpt.pt"
    if args.resume and ckpt.exists():
        st = torch.load(ckpt, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step, best = st["step"], st.get("best", -1.0)
        print(f"resumed at step {step} (best val {best:.3f})", flush=True)
    n_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("aux"))
    print(f"config {asdict(cfg)}\nparams {n_params / 1e6:.2f} M, vocab {tok.n_vocab}, threads {args.threads}", flush=True)
    if step == 0 and args.vit_steps:
        vision_warmup(model, args)
    val = D.generate_split(args.val_n, VAL_SEED)
    kind_weights = None
    if args.kind_weight:
        kw = dict(x.split("=") for x in args.kind_weight.split(","))
        if not set(kw) <= set(D.KINDS):
            raise SystemExit(f"--kind-weight: kinds are {', '.join(D.KINDS)}")
        kind_weights = [float(kw.get(t, 1.0)) for t in D.KINDS]

    def save(path: Path, extra: dict | None = None) -> None:
        tmp = path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "best": best,
                    "config": asdict(cfg), **(extra or {})}, tmp)
        tmp.replace(path)

    t0 = tl = time.time()
    run = {"loss": 0.0, "aux": 0.0, "bind": 0.0, "read": 0.0, "n": 0, "kinds": {}}
    batches = prefetch(range(step, min(args.steps, args.stop_at or args.steps)), args.batch, args.k, tok)
    while step < min(args.steps, args.stop_at or args.steps):
        for g in opt.param_groups:
            g["lr"] = T1.lr_at(step, args.steps, args.lr, args.warmup)
        batch = next(batches)
        loss, aux, bind, read, per_kind = forward_train(model, batch, kind_weights)
        total = loss + args.aux_weight * aux + args.bind_weight * bind + args.read_weight * read
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        for key, v in (("loss", loss), ("aux", aux), ("bind", bind), ("read", read)):
            run[key] += float(v.detach())
        run["n"] += 1
        for t, (c, n) in per_kind.items():
            r = run["kinds"].setdefault(t, [0, 0])
            r[0] += c
            r[1] += n
        if step % args.log_every == 0:
            tt = {t: tuple(v) for t, v in run["kinds"].items()}
            tt["all"] = (sum(v[0] for v in tt.values()), sum(v[1] for v in tt.values()))
            print(f"step {step} loss {run['loss'] / run['n']:.4f} aux {run['aux'] / run['n']:.4f} "
                  f"bind {run['bind'] / run['n']:.3f} read {run['read'] / run['n']:.3f} "
                  f"lr {opt.param_groups[0]['lr']:.2e} train-tf {fmt_acc(tt)} "
                  f"{(time.time() - tl) / run['n']:.2f}s/step elapsed {(time.time() - t0) / 60:.1f}min", flush=True)
            run = {"loss": 0.0, "aux": 0.0, "bind": 0.0, "read": 0.0, "n": 0, "kinds": {}}
            tl = time.time()
        if step % args.eval_every == 0 or step == args.steps:
            te = time.time()
            acc = evaluate(model, tok, val)
            a = acc["all"][0] / acc["all"][1]
            print(f"VAL step {step} {fmt_acc(acc)} ({time.time() - te:.0f}s)", flush=True)
            if a > best:
                best = a
                save(out / "best.pt", {"val": {k: list(v) for k, v in acc.items()}})
            save(ckpt)
            worst = min(v[0] / v[1] for v in acc.values())
            if args.target and a >= args.target and worst >= args.target - 0.05:
                print(f"target {args.target} reached at step {step}", flush=True)
                break
        elif step % args.save_every == 0:
            save(ckpt)
    save(ckpt)
    print(f"done: step {step}, best val {best:.3f}, {(time.time() - t0) / 60:.1f} min", flush=True)
    return 0


# ----------------------------------------------------------------------------------------------------
# load, export


def load_model(path: Path | None, random_seed: int = 0):
    """(cfg, tok, model, checkpoint dict); path None: the untrained model with random_init's weights."""
    import torch

    cfg = Config()
    if path is None:
        tok = Tok(OUT_DIR)
        model = build_model(cfg)(tok.n_vocab)
        random_init(model, random_seed)
        st = {"step": 0}
    else:
        st = torch.load(path, weights_only=False)
        cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in st["config"].items()})
        tok = Tok(Path(path).parent)
        model = build_model(cfg)(tok.n_vocab)
        model.load_state_dict(st["model"])
    model.eval()
    return cfg, tok, model, st


def _ckpt(args) -> Path | None:
    return None if args.random else Path(args.ckpt)


def export_weights(model, cfg: Config) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The weights under GGUF names (numpy, PyTorch layout), as topv_edge.lab.synth writes them."""
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    text = {"token_embd.weight": sd["tok_emb.weight"], "output_norm.weight": sd["out_norm.weight"],
            "output.weight": sd["out.weight"]}
    names = {"attn_norm.weight": "attn_norm.weight", "attn_q.weight": "q.weight", "attn_q.bias": "q.bias",
             "attn_k.weight": "k.weight", "attn_k.bias": "k.bias", "attn_v.weight": "v.weight",
             "attn_v.bias": "v.bias", "attn_output.weight": "o.weight", "ffn_norm.weight": "ffn_norm.weight",
             "ffn_gate.weight": "gate.weight", "ffn_up.weight": "up.weight", "ffn_down.weight": "down.weight"}
    for i in range(cfg.n_layer):
        for g, t in names.items():
            text[f"blk.{i}.{g}"] = sd[f"blocks.{i}.{t}"]
    k = sd["vision.patch.weight"]
    vis = {"v.patch_embd.weight": k, "v.patch_embd.weight.1": np.zeros_like(k),  # a still image: frame 2 adds 0
           "v.post_ln.weight": sd["vision.post_ln.weight"], "v.post_ln.bias": sd["vision.post_ln.bias"],
           "mm.0.weight": sd["vision.mm0.weight"], "mm.0.bias": sd["vision.mm0.bias"],
           "mm.2.weight": sd["vision.mm2.weight"], "mm.2.bias": sd["vision.mm2.bias"]}
    vnames = {"attn_q": "q", "attn_k": "k", "attn_v": "v", "attn_out": "o", "ln1": "ln1", "ln2": "ln2",
              "ffn_up": "up", "ffn_down": "down"}
    for i in range(cfg.v_layer):
        for g, t in vnames.items():
            for kind in ("weight", "bias"):
                vis[f"v.blk.{i}.{g}.{kind}"] = sd[f"vision.blocks.{i}.{t}.{kind}"]
    return text, vis


DEMO_PICTURE_SEED = 3  # an evaluation seed (never trained on)


def write_demo_picture(out: Path) -> Path:
    """demo.png and demo.json (one question of each kind with its answer): the first scene of seed
    DEMO_PICTURE_SEED with three objects and a box."""
    for i in range(1000):
        rng = D.example_rng(DEMO_PICTURE_SEED, i)
        scene = D.make_scene(rng)
        if len(scene.objects) == 3 and len(D.available_kinds(scene)) == len(D.KINDS):
            break
    img, _ = D.render(scene)
    path = out / "demo.png"
    img.save(path)
    qa = [dict(zip(("question", "answer", "kind"), D.ask(scene, rng, t)[:3])) for t in D.KINDS]
    path.with_suffix(".json").write_text(json.dumps(qa, indent=1) + "\n")
    return path


def cmd_export(args) -> int:
    cfg, tok, model, st = load_model(_ckpt(args), args.random_seed)
    text_w, vis_w = export_weights(model, cfg)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_path, mmproj_path = out / MODEL_NAME, out / MMPROJ_NAME
    S.write_text_model(model_path.with_suffix(".tmp"), cfg.text_config(), tok.spec, text_w, args.dtype,
                       name="topv-edge scenes VLM")
    S.write_mmproj(mmproj_path.with_suffix(".tmp"), cfg.vision_config(), cfg.n_embd, vis_w, args.dtype,
                   name="topv-edge scenes VLM mmproj")
    model_path.with_suffix(".tmp").replace(model_path)
    mmproj_path.with_suffix(".tmp").replace(mmproj_path)
    files = [model_path, mmproj_path]
    if not args.random:
        picture = write_demo_picture(out)
        files += [picture, picture.with_suffix(".json")]
    for p in files:
        print(f"{p} {p.stat().st_size / 1e6:.2f} MB")
    return 0


# ----------------------------------------------------------------------------------------------------
# llama.cpp side


def _eval_rows(args) -> list[dict]:
    if args.data:
        return D.read_jsonl(Path(args.data) / "data.jsonl")
    return D.read_jsonl(D.cached_split(REPO / "build" / "eval", args.n, args.seed))


def cmd_verify(args) -> int:
    """Same questions through PyTorch and llama.cpp: greedy answers must agree, first-token logits close."""
    import torch
    from PIL import Image

    torch.set_num_threads(args.threads)
    cfg, tok, model, st = load_model(_ckpt(args), args.random_seed)
    out = Path(args.out)
    rows = _eval_rows(args)
    imgs = [Image.open(r["image"]).convert("RGB") for r in rows]
    pt_ans, pt_logits = greedy_answers(model, tok, imgs, [r["question"] for r in rows], return_logits=True)
    vlm = T1.LlamaCppVLM(out / MODEL_NAME, out / MMPROJ_NAME, threads=args.threads)
    agree, max_diff, worst_rel, top_agree = 0, 0.0, 0.0, 0
    try:
        for r, pa, pl in zip(rows, pt_ans, pt_logits):
            la, ll = vlm.ask(r["image"], r["question"], max_new=3)
            agree += int(pa == la)
            top_agree += int(np.argmax(ll) == np.argmax(pl))
            d = float(np.abs(ll - pl).max())
            max_diff = max(max_diff, d)
            worst_rel = max(worst_rel, d / float(np.abs(pl).max()))
            if pa != la:
                print(f"MISMATCH {r['image']} {r['question']!r}: torch {pa!r} llama.cpp {la!r}")
    finally:
        vlm.close()
    n = len(rows)
    print(f"verify ({'untrained' if args.random else 'step ' + str(st['step'])}), {n} questions: {agree}/{n} greedy "
          f"answers agree, {top_agree}/{n} first tokens; first-token logits max |diff| {max_diff:.4f} "
          f"(at most {100 * worst_rel:.2f} % of the question's largest |logit|)")
    return 0 if agree == n and worst_rel < 0.02 else 1


def cmd_llama_eval(args) -> int:
    rows = _eval_rows(args)
    out = Path(args.out)
    vlm = T1.LlamaCppVLM(out / MODEL_NAME, out / MMPROJ_NAME, threads=args.threads)
    res = []
    t = time.time()
    try:
        for r in rows:
            a, _ = vlm.ask(r["image"], r["question"], max_new=3)
            res.append((r["kind"], r["answer"], a))
    finally:
        vlm.close()
    acc = D.accuracy_by_type(res)
    print(f"llama.cpp (unpruned), {len(rows)} examples: {fmt_acc(acc)} ({time.time() - t:.0f}s)")
    print(json.dumps({k: list(v) for k, v in acc.items()}))
    return 0


def cmd_eval(args) -> int:
    import torch

    torch.set_num_threads(args.threads)
    cfg, tok, model, st = load_model(_ckpt(args), args.random_seed)
    ex = D.generate_split(args.n, args.seed)
    t = time.time()
    acc = evaluate(model, tok, ex)
    print(f"PyTorch, step {st['step']}, seed {args.seed}, n {args.n}: {fmt_acc(acc)} ({time.time() - t:.0f}s)")
    print(json.dumps({k: list(v) for k, v in acc.items()}))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--out", default=str(OUT_DIR))
    t.add_argument("--steps", type=int, default=2500)
    t.add_argument("--batch", type=int, default=8, help="pictures per step")
    t.add_argument("--k", type=int, default=5, help="questions per picture (packed branches)")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--warmup", type=int, default=100)
    t.add_argument("--aux-weight", type=float, default=0.5)
    t.add_argument("--bind-weight", type=float, default=1.0)
    t.add_argument("--read-weight", type=float, default=1.0)
    t.add_argument("--kind-weight", default="", help="answer-loss weight per kind, e.g. left=2,above=2")
    t.add_argument("--vit-steps", type=int, default=150)
    t.add_argument("--vit-batch", type=int, default=16)
    t.add_argument("--val-n", type=int, default=300)
    t.add_argument("--eval-every", type=int, default=250)
    t.add_argument("--save-every", type=int, default=50)
    t.add_argument("--log-every", type=int, default=25)
    t.add_argument("--target", type=float, default=0.0, help="stop once val accuracy reaches this (0: never)")
    t.add_argument("--seed", type=int, default=0, help="torch seed (initialisation)")
    t.add_argument("--threads", type=int, default=1, help="torch threads (1 is faster on a busy 2-core machine)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt")
    t.add_argument("--stop-at", type=int, default=0, help="stop after this step (continue with --resume)")
    for name in ("eval", "export", "verify", "llama-eval"):
        p = sub.add_parser(name)
        p.add_argument("--ckpt", default=str(OUT_DIR / "best.pt"))
        p.add_argument("--random", action="store_true", help="the untrained model (random_init) instead of --ckpt")
        p.add_argument("--random-seed", type=int, default=0)
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("-o", "--out", default=str(MODEL_DIR))
        p.add_argument("--n", type=int, default=600)
        p.add_argument("--seed", type=int, default=VAL_SEED if name == "eval" else TEST_SEED)
        p.add_argument("--data", help="a data.jsonl directory (default: the generated split)")
        if name == "export":
            p.add_argument("--dtype", choices=["f32", "f16"], default="f16")
    args = ap.parse_args(argv)
    return {"train": cmd_train, "eval": cmd_eval, "export": cmd_export, "verify": cmd_verify,
            "llama-eval": cmd_llama_eval}[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
