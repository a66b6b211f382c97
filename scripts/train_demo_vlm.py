#!/usr/bin/env python3
"""Train, evaluate, export and verify the demo VLM: a small LLaVA-1.5-style model trained on
topv_edge.lab.data.demo, whose GGUF pair (llama text model + `mlp` mmproj) llama.cpp runs at the pinned
commit (0c1e57098bba). See docs/demo_model.md for the model card.

    python scripts/train_demo_vlm.py train   [--steps 3000] [--resume] ...          # build/demo_vlm/
    python scripts/train_demo_vlm.py eval    [--n 600] [--seed 1]                   # PyTorch, greedy
    python scripts/train_demo_vlm.py export  [-o topv_edge/demo_model] [--dtype f16]         # the GGUF pair
    python scripts/train_demo_vlm.py verify  [-o topv_edge/demo_model] [--n 60]              # PyTorch vs llama.cpp
    python scripts/train_demo_vlm.py llama-eval [--data DIR | --n 600 --seed 2]     # accuracy via llama.cpp

The shipped model (46 minutes on 2 cores; the read-out loss joined the recipe at step 3000):

    python scripts/train_demo_vlm.py train --steps 6000 --eval-every 500 --threads 2 --kind-weight shape=3,exists=3 --stop-at 3000
    python scripts/train_demo_vlm.py train --resume --steps 6000 --eval-every 500 --threads 2 \
        --kind-weight shape=3,exists=3 --read-weight 1 --target 0.95

PyTorch is a script-only dependency (pip install torch==2.13.0); the project's runtime never needs it.

What the PyTorch model computes is what llama.cpp computes for such a pair:
- vision (clip.cpp `clip_graph_llava`): conv patch embedding with bias, learned position table
  (no class embedding), `v.pre_ln` LayerNorm, pre-norm blocks (LayerNorm eps 1e-5, attention with
  q/k/v/out biases and scale 1/sqrt(d_head), no mask; FFN up -> GELU (tanh form, ggml_gelu, as
  clip.use_gelu selects) -> down, biases), no post-layernorm, and the projector is fed by the
  output of block n_layer-2 (llama.cpp runs blocks 0 .. n_layer-2 only: the "penultimate layer"
  of LLaVA). The file holds n_layer blocks; the last one is never run (kept at its random init);
- projector `mlp`: mm.0 -> GELU (tanh) -> mm.2;
- preprocessing: pictures are already 168 x 168 (llama.cpp copies an image of the right size
  unchanged), pixel / 255, then (x - mean) / std per channel with CLIP's mean/std;
- text (llama): RMSNorm eps 1e-5, RoPE "normal" mode (adjacent pairs), base 10000, causal
  attention (image tokens included), SwiGLU FFN, untied output; image embeddings are input
  embeddings at consecutive positions after the text before the media marker.
Prompt (the GGUF's chat template): "<s>USER: " + 144 image embeddings + "{question}\\nASSISTANT:",
answer " {word}</s>". Loss on the answer tokens only.

Training packs several questions about one picture into one sequence as independent branches:
each branch attends to the prompt prefix and the image and to itself only, and its positions
continue from the image (so every branch sees exactly the single-question prompt). A per-patch
auxiliary head on the image tokens (colour and shape of the object covering each patch, the patch's row
and column; not exported), a ViT-only warm-up, a curriculum on the number of shapes, a binding loss
(attention heads of the answer position pulled towards the patches of the object the question names,
or towards every object for "how many") and a read-out loss (that head's output must tell the named
object's colour and shape) make it learn within an hour. Runs and figures: docs/demo_model.md.
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

# topv_edge first: it points llama_cpp at the project's patched llama.cpp build (the only one installed;
# with TopV off it computes bit-identically to stock llama.cpp, tests/llama/test_llama_patch.py checks that)
from topv_edge.lab.data import demo as D  # noqa: E402
from topv_edge.lab import synth as S  # noqa: E402
from topv_edge.session.templates import LLAVA15_TEMPLATE, compile_chat_template  # noqa: E402
import llama_cpp  # noqa: E402
import llama_cpp.mtmd_cpp  # noqa: E402,F401

OUT_DIR = REPO / "build" / "demo_vlm"
TRAIN_SEED_BASE = 1000            # batch of step t: examples from default_rng([TRAIN_SEED_BASE + t, i])
BIND_LAYER, BIND_HEAD = 1, 0      # the attention head the binding loss trains on object questions
COUNT_HEAD = 1                    # ... and the one it trains on "how many" questions
VIT_SEED_BASE = 10 ** 6            # ViT warm-up batches (also >= 1000: never an evaluation seed)
VAL_SEED, TEST_SEED = 1, 2
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MARKER = "<__media__>"


@dataclass(frozen=True)
class Config:
    # text (llama)
    n_embd: int = 256
    n_ff: int = 512
    n_layer: int = 4
    n_head: int = 4
    n_head_kv: int = 4
    rope_base: float = 10000.0
    rms_eps: float = 1e-5
    # vision (CLIP-style ViT, `mlp` projector)
    image_size: int = D.IMAGE_SIZE
    patch_size: int = D.PATCH_SIZE
    v_embd: int = 192
    v_ff: int = 768
    v_layer: int = 5              # in the file; the projector reads block v_layer-2's output
    v_head: int = 3
    ln_eps: float = 1e-5
    proj_hidden: int = 256

    def text_config(self) -> "S.TextConfig":
        return S.TextConfig(arch="llama", n_embd=self.n_embd, n_ff=self.n_ff, n_layer=self.n_layer,
                            n_head=self.n_head, n_head_kv=self.n_head_kv, rope_base=self.rope_base,
                            rms_eps=self.rms_eps, n_ctx_train=2048)

    def vision_config(self) -> "S.VisionConfig":
        return S.VisionConfig(projector="mlp", image_size=self.image_size, patch_size=self.patch_size,
                              n_embd=self.v_embd, n_ff=self.v_ff, n_layer=self.v_layer, n_head=self.v_head,
                              ln_eps=self.ln_eps, proj_hidden=self.proj_hidden, class_embedding=False,
                              image_mean=CLIP_MEAN, image_std=CLIP_STD)


# ----------------------------------------------------------------------------------------------------
# tokenizer: the project's gpt2-style BPE, merges learnt on the data set's words; token ids come from
# llama.cpp itself (a vocab-only load of a GGUF holding the tokenizer), so training sees exactly the
# ids llama.cpp produces for the chat template's text.


def make_tokenizer() -> "S.Tokenizer":
    return S.make_tokenizer(["<s>", "</s>"], LLAVA15_TEMPLATE, n_merges=1000, corpus=" ".join(D.VOCAB_WORDS))


class Tok:
    def __init__(self, workdir: Path) -> None:
        self.spec = make_tokenizer()
        path = workdir / "vocab.gguf"
        workdir.mkdir(parents=True, exist_ok=True)
        tcfg = S.TextConfig(n_embd=8, n_ff=16, n_layer=1, n_head=1, n_head_kv=1)
        w = S.random_weights(S.text_weight_shapes(tcfg, len(self.spec.tokens)), np.random.default_rng(0))
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        S.write_text_model(tmp, tcfg, self.spec, w, name="demo-vlm vocab")
        tmp.replace(path)
        self.llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
        self.bos, self.eos = self.spec.bos, self.spec.eos
        self.n_vocab = len(self.spec.tokens)
        self._cache: dict[tuple[str, bool], list[int]] = {}
        self.template = compile_chat_template(self.spec.chat_template)
        b2u = S._bytes_to_unicode()
        self._u2b = {u: b for b, u in b2u.items()}

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        key = (text, add_bos)
        if key not in self._cache:
            self._cache[key] = list(self.llm.tokenize(text.encode(), add_bos=add_bos, special=True))
        return self._cache[key]

    def decode(self, ids: list[int]) -> str:
        out = bytearray()
        for i in ids:
            if i in (self.bos, self.eos):
                continue
            out += bytes(self._u2b[ch] for ch in self.spec.tokens[i])
        return out.decode("utf-8", "replace")

    # the pieces of a single-question prompt, the template's text split at the media marker (as mtmd does)
    def prefix(self) -> list[int]:
        return self.encode(render_prompt(self.template, "").split(MARKER)[0], add_bos=True)

    def question(self, q: str) -> list[int]:
        return self.encode(render_prompt(self.template, q).split(MARKER)[1])

    def answer(self, a: str) -> list[int]:
        return self.encode(f" {a}") + [self.eos]


def render_prompt(template, question: str) -> str:
    """A compiled chat template's rendering of one user turn, image first (the runtime's message shape)."""
    return template.render(messages=[{"role": "user", "content": [{"type": "text", "text": MARKER},
                                                                  {"type": "text", "text": question}]}],
                           add_generation_prompt=True)


# ----------------------------------------------------------------------------------------------------
# the model (torch)


def build_model(cfg: Config):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    def gelu(x):
        return F.gelu(x, approximate="tanh")

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
            h, hd = cfg.v_head, d // cfg.v_head
            y = self.ln1(x)
            q = self.q(y).view(B, N, h, hd).transpose(1, 2)
            k = self.k(y).view(B, N, h, hd).transpose(1, 2)
            v = self.v(y).view(B, N, h, hd).transpose(1, 2)
            a = F.scaled_dot_product_attention(q, k, v)
            x = x + self.o(a.transpose(1, 2).reshape(B, N, d))
            return x + self.down(gelu(self.up(self.ln2(x))))

    class Vision(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            d, g = cfg.v_embd, cfg.image_size // cfg.patch_size
            self.patch = nn.Conv2d(3, d, cfg.patch_size, stride=cfg.patch_size, bias=True)
            self.pos = nn.Parameter(torch.randn(g * g, d) * 0.02)
            self.pre_ln = nn.LayerNorm(d, eps=cfg.ln_eps)
            self.blocks = nn.ModuleList(VBlock() for _ in range(cfg.v_layer))
            self.mm0 = nn.Linear(d, cfg.proj_hidden)
            self.mm2 = nn.Linear(cfg.proj_hidden, cfg.n_embd)

        def features(self, pix):
            x = self.patch(pix).flatten(2).transpose(1, 2)  # (B, N, d), patch index = row * grid + col
            x = self.pre_ln(x + self.pos)
            for blk in self.blocks[: cfg.v_layer - 1]:      # llama.cpp stops before the last block
                x = blk(x)
            return x

        def project(self, feats):
            return self.mm2(gelu(self.mm0(feats)))

    class RMSNorm(nn.Module):
        def __init__(self, d: int) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(d))

        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.rms_eps) * self.weight

    def rope(x, pos):
        # x (B, h, L, hd), pos (B, L): llama.cpp's normal mode, pairs (2i, 2i+1), theta = pos * base^(-2i/hd)
        hd = x.shape[-1]
        inv = cfg.rope_base ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
        ang = (pos.to(torch.float64)[..., None] * inv).to(x.dtype)[:, None]  # (B, 1, L, hd/2)
        c, s = ang.cos(), ang.sin()
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)

    class TBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            e, hd = cfg.n_embd, cfg.n_embd // cfg.n_head
            self.attn_norm = RMSNorm(e)
            self.q = nn.Linear(e, cfg.n_head * hd, bias=False)
            self.k = nn.Linear(e, cfg.n_head_kv * hd, bias=False)
            self.v = nn.Linear(e, cfg.n_head_kv * hd, bias=False)
            self.o = nn.Linear(cfg.n_head * hd, e, bias=False)
            self.ffn_norm = RMSNorm(e)
            self.gate = nn.Linear(e, cfg.n_ff, bias=False)
            self.up = nn.Linear(e, cfg.n_ff, bias=False)
            self.down = nn.Linear(cfg.n_ff, e, bias=False)
            self.keep_qk, self.qk = False, None

        def forward(self, x, pos, mask):
            B, L, e = x.shape
            h, kvh, hd = cfg.n_head, cfg.n_head_kv, e // cfg.n_head
            y = self.attn_norm(x)
            q = rope(self.q(y).view(B, L, h, hd).transpose(1, 2), pos)
            k = rope(self.k(y).view(B, L, kvh, hd).transpose(1, 2), pos)
            v = self.v(y).view(B, L, kvh, hd).transpose(1, 2)
            if kvh != h:
                k, v = k.repeat_interleave(h // kvh, 1), v.repeat_interleave(h // kvh, 1)
            if self.keep_qk:
                self.qk = (q, k, v)  # for the binding and read-out losses (training only)
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
            # training-only auxiliary heads on the vision features (not exported)
            # (on the projector's output, the image tokens the language model reads)
            self.aux_color = nn.Linear(cfg.n_embd, 1 + len(D.COLORS))
            self.aux_shape = nn.Linear(cfg.n_embd, 1 + len(D.SHAPES))
            self.aux_col = nn.Linear(cfg.n_embd, D.GRID)   # the patch's column and row: left/right and
            self.aux_row = nn.Linear(cfg.n_embd, D.GRID)   # top/bottom need them in the image tokens
            # colour and shape of the named object from the binding head's read-out (readout_loss)
            self.aux_read = nn.Linear(cfg.n_embd // cfg.n_head, len(D.COLORS) + len(D.SHAPES))
            self.apply(self._init)
            # 2-D sin-cos start for the position table (as MAE does): attention can be local from step 0
            with torch.no_grad():
                self.vision.pos.copy_(sincos_2d(cfg.image_size // cfg.patch_size, cfg.v_embd))

        @staticmethod
        def _init(m) -> None:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)

        def text(self, x, pos, mask):
            for blk in self.blocks:
                x = blk(x, pos, mask)
            return self.out_norm(x)

    return VLM


def sincos_2d(grid: int, d: int):
    """[grid*grid, d] 2-D sine-cosine position table (row-major patches): x in the first half, y in the second."""
    import torch

    q = d // 4
    omega = 1.0 / (100.0 ** (np.arange(q) / q))
    y, x = (a.reshape(-1, 1) for a in np.mgrid[0:grid, 0:grid])
    table = np.concatenate([np.sin(x * omega), np.cos(x * omega), np.sin(y * omega), np.cos(y * omega)], 1)
    return torch.tensor(table, dtype=torch.float32)


def pixels(img) -> np.ndarray:
    """llama.cpp's preprocessing for this mmproj: (3, H, W) float32."""
    a = np.asarray(img.convert("RGB"), np.float32) / 255.0
    if a.shape[:2] != (D.IMAGE_SIZE, D.IMAGE_SIZE):
        raise ValueError(f"demo pictures are {D.IMAGE_SIZE} x {D.IMAGE_SIZE}, got {a.shape[1]} x {a.shape[0]}")
    a = (a - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    return np.ascontiguousarray(a.transpose(2, 0, 1))


# ----------------------------------------------------------------------------------------------------
# batches


def labelled_picture(rng, n_objects: int | None = None):
    """(scene, model input pixels, per-patch colour classes, per-patch shape classes, anchors) of a new
    scene; anchors: one patch per object (the one it covers most, first in raster order)."""
    scene = D.make_scene(rng, n_objects)
    img, mask = D.render(scene)
    p = D.PATCH_SIZE
    m = mask.reshape(D.GRID, p, D.GRID, p).transpose(0, 2, 1, 3).reshape(D.GRID * D.GRID, p * p)
    anchors = [int(np.argmax((m == k + 1).mean(1))) for k in range(len(scene.objects))]
    return (scene, pixels(img), *D.patch_labels(scene, mask), anchors)


def named_object(scene, question: str, qtype: str):
    """The one object in the scene a question names by colour and / or shape; None if it names none
    (count, a "no" to exists) or several."""
    if qtype == "count":
        return None
    words = question.lower().rstrip("?").split()
    col = next((w for w in words if w in D.COLORS), None)
    shp = next((w for w in words if w in D.SHAPES), None)
    objs = [o for o in scene.objects if (col is None or o.color == col) and (shp is None or o.shape == shp)]
    return objs[0] if len(objs) == 1 else None


def object_patches(o, colours, shapes):
    """The image tokens of object o (float mask over the patches), None if it covers no patch enough to be
    labelled."""
    where = (colours == 1 + list(D.COLORS).index(o.color)) & (shapes == 1 + D.SHAPES.index(o.shape))
    return where.astype(np.float32) if where.any() else None


def answer_attention(model, entries: list, heads: list[int], n_prefix: int):
    """Layer BIND_LAYER's attention logits at the positions that predict answers, over the prompt prefix
    and the image tokens: entries (b, index, ...) and a head each -> ((n, n_keys) logits, b, heads)."""
    import torch

    q, k, _ = model.blocks[BIND_LAYER].qk
    n_keys = n_prefix + D.GRID * D.GRID
    bi = torch.tensor([x[0] for x in entries])
    ti = torch.tensor([x[1] for x in entries])
    hi = torch.tensor(heads)
    logits = torch.einsum("nd,nid->ni", q[bi, hi, ti], k[bi, hi, :n_keys]) / math.sqrt(q.shape[-1])
    return logits, bi, hi


def binding_loss(model, batch):
    """Cross-entropy between one attention head's weights over the prompt prefix and the image tokens,
    at the position that predicts the answer, and where the answer is: the patches of the object the
    question names (head BIND_HEAD), or, for "how many", the first token and one patch per object in
    equal parts (head COUNT_HEAD: the share left on the first token then says the count). Teaches the
    lookups the answers need. Training only; llama.cpp never sees it."""
    import torch

    if not batch["bind"]:
        return torch.zeros(())
    logits, _, _ = answer_attention(model, batch["bind"], [x[2] for x in batch["bind"]], batch["n_prefix"])
    target = torch.from_numpy(np.stack([x[3] for x in batch["bind"]]))
    return -(target * torch.log_softmax(logits, -1)).sum(-1).mean()


def readout_loss(model, batch):
    """Cross-entropy of the colour and the shape of the object a question names, predicted by a linear
    probe from what the binding head reads there (its attention over the prefix and image tokens times
    their values). The binding loss teaches the head where to look; this teaches its value path to carry
    what the answer needs (without it, shape answers lag colour answers for thousands of steps while
    the image tokens themselves hold the shape). Training only; llama.cpp never sees it."""
    import torch
    import torch.nn.functional as F

    if not batch["read"]:
        return torch.zeros(())
    logits, bi, hi = answer_attention(model, batch["read"], [BIND_HEAD] * len(batch["read"]), batch["n_prefix"])
    v = model.blocks[BIND_LAYER].qk[2][bi, hi, :logits.shape[1]]          # (n, n_keys, hd)
    out = model.aux_read(torch.einsum("ni,nid->nd", torch.softmax(logits, -1), v))
    nc = len(D.COLORS)
    return (F.cross_entropy(out[:, :nc], torch.tensor([x[2] for x in batch["read"]]))
            + F.cross_entropy(out[:, nc:], torch.tensor([x[3] for x in batch["read"]])))


def binding_target(named, qtype: str, colours, shapes, anchors, n_prefix: int):
    """(head, distribution over the prefix and image tokens) the binding loss pulls towards, or None;
    named: the object the question names (named_object)."""
    t = np.zeros(n_prefix + D.GRID * D.GRID, np.float32)
    if qtype == "count":
        t[0] = 1.0
        t[n_prefix + np.asarray(anchors)] = 1.0
        return COUNT_HEAD, t / t.sum()
    where = None if named is None else object_patches(named, colours, shapes)
    if where is None:
        return None
    t[n_prefix:] = where / where.sum()
    return BIND_HEAD, t


def make_train_batch(step: int, batch: int, k: int, tok: Tok, max_objects: int = D.MAX_SHAPES):
    """`batch` pictures (1 to max_objects shapes) with up to k questions each, packed as branches;
    everything from the step's seed."""
    import torch

    n_img = D.GRID * D.GRID
    prefix = tok.prefix()
    P = len(prefix) + n_img
    rows, pix, aux_c, aux_s = [], [], [], []
    for i in range(batch):
        rng = D.example_rng(TRAIN_SEED_BASE + step, i)
        scene, x, c, s, anchors = labelled_picture(rng, int(rng.integers(1, max_objects + 1)))
        pix.append(x)
        aux_c.append(c)
        aux_s.append(s)
        branches = []
        for q, a, t in D.ask_many(scene, rng, k):
            qi, ai = tok.question(q), tok.answer(a)
            o = named_object(scene, q, t)
            named = None if o is None else (list(D.COLORS).index(o.color), D.SHAPES.index(o.shape))
            branches.append((qi, ai, t, binding_target(o, t, c, s, anchors, len(prefix)), named))
        rows.append(branches)
    L = P + max(sum(len(q) + len(a) - 1 for q, a, *_ in br) for br in rows)
    ids = torch.zeros(batch, L, dtype=torch.long)
    pos = torch.zeros(batch, L, dtype=torch.long)
    targets = torch.full((batch, L), -100, dtype=torch.long)
    kinds = torch.full((batch, L), -1, dtype=torch.long)      # question kind (index in D.QTYPES) of each target
    first = []           # (b, index, answer first token, qtype): teacher-forced accuracy of the answer word
    bind = []            # (b, index, head, distribution over prefix + image tokens): see binding_loss
    read = []            # (b, index, colour, shape of the named object): see readout_loss
    mask = torch.zeros(batch, L, L, dtype=torch.bool)
    for b, br in enumerate(rows):
        ids[b, : len(prefix)] = torch.tensor(prefix)
        pos[b, :P] = torch.arange(P)
        mask[b, :P, :P] = torch.ones(P, P, dtype=torch.bool).tril()
        cur = P
        for qi, ai, t, bt, named in br:
            seq = qi + ai[:-1]              # inputs; the last answer token (</s>) is only a target
            tgt = [-100] * (len(qi) - 1) + ai
            n = len(seq)
            ids[b, cur:cur + n] = torch.tensor(seq)
            pos[b, cur:cur + n] = torch.arange(P, P + n)
            targets[b, cur:cur + n] = torch.tensor(tgt)
            kinds[b, cur:cur + n] = D.QTYPES.index(t)
            mask[b, cur:cur + n, :P] = True
            mask[b, cur:cur + n, cur:cur + n] = torch.ones(n, n, dtype=torch.bool).tril()
            first.append((b, cur + len(qi) - 1, ai[0], t))
            if bt is not None:
                bind.append((b, cur + len(qi) - 1, *bt))
            if named is not None:
                read.append((b, cur + len(qi) - 1, *named))
            cur += n
        if cur < L:  # padding rows attend to themselves only (no NaN), never a target
            idx = torch.arange(cur, L)
            mask[b, idx, idx] = True
    return {
        "pix": torch.from_numpy(np.stack(pix)), "ids": ids, "pos": pos, "targets": targets, "kinds": kinds,
        "mask": mask[:, None], "aux_c": torch.from_numpy(np.stack(aux_c)), "aux_s": torch.from_numpy(np.stack(aux_s)),
        "first": first, "n_prefix": len(prefix), "bind": bind, "read": read,
    }


def aux_loss(model, feats, colours, shapes):
    """Per-patch colour and shape of the covering object (0: background), and the patch's column and row.
    Most patches are background, so the shape, column and row terms are also taken over object patches
    alone: without them the ViT does not learn shapes, and object patches lose their position (46 %
    column accuracy on object patches vs 99.6 % on background, and left/right at chance)."""
    import torch
    import torch.nn.functional as F

    obj = colours > 0
    ls = model.aux_shape(feats)
    n = feats.shape[1]
    col = (torch.arange(n) % D.GRID).expand(feats.shape[0], n)
    row = (torch.arange(n) // D.GRID).expand(feats.shape[0], n)
    return (F.cross_entropy(model.aux_color(feats).flatten(0, 1), colours.flatten())
            + F.cross_entropy(ls.flatten(0, 1), shapes.flatten()) + 2.0 * F.cross_entropy(ls[obj], shapes[obj])
            + 0.5 * F.cross_entropy(model.aux_col(feats).flatten(0, 1), col.flatten())
            + 0.5 * F.cross_entropy(model.aux_row(feats).flatten(0, 1), row.flatten())
            + F.cross_entropy(model.aux_col(feats)[obj], col[obj]) + F.cross_entropy(model.aux_row(feats)[obj], row[obj]))


def make_vision_batch(step: int, batch: int):
    """Pictures and per-patch labels only (the ViT warm-up); seeds distinct from the main phase's."""
    import torch

    pix, cs, ss = zip(*(labelled_picture(D.example_rng(VIT_SEED_BASE + step, i))[1:4] for i in range(batch)))
    return torch.from_numpy(np.stack(pix)), torch.from_numpy(np.stack(cs)), torch.from_numpy(np.stack(ss))


def vision_warmup(model, args) -> None:
    """Train the ViT and the auxiliary heads alone for a while: the language model then starts from image
    tokens that already say colour and shape, and the whole model converges several times faster."""
    import torch

    params = [p for n, p in model.named_parameters() if n.startswith(("vision.", "aux_"))]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    t0 = time.time()
    for step in range(args.vit_steps):
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, (step + 1) / 25)
        pix, cs, ss = make_vision_batch(step, args.vit_batch)
        feats = model.vision.project(model.vision.features(pix))
        loss = aux_loss(model, feats, cs, ss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if (step + 1) % args.log_every == 0:
            with torch.no_grad():
                obj = cs > 0
                acc_s = (model.aux_shape(feats)[obj].argmax(-1) == ss[obj]).float().mean().item()
                acc_c = (model.aux_color(feats)[obj].argmax(-1) == cs[obj]).float().mean().item()
                col = (torch.arange(feats.shape[1]) % D.GRID).expand(feats.shape[0], -1)
                acc_x = (model.aux_col(feats)[obj].argmax(-1) == col[obj]).float().mean().item()
            print(f"vit step {step + 1} aux {loss.item():.4f} object patches: colour {acc_c:.3f} shape {acc_s:.3f} "
                  f"column {acc_x:.3f} "
                  f"elapsed {(time.time() - t0) / 60:.1f}min", flush=True)


def forward_train(model, batch, kind_weights=None):
    """(answer loss, per-patch loss, binding loss, read-out loss, teacher-forced accuracy per kind); kind_weights: a
    weight per question kind (D.QTYPES order) for the answer loss, None for all 1."""
    import torch
    import torch.nn.functional as F

    feats = model.vision.features(batch["pix"])
    img = model.vision.project(feats)
    x = model.tok_emb(batch["ids"])
    npf = batch["n_prefix"]
    x = torch.cat([x[:, :npf], img, x[:, npf + img.shape[1]:]], dim=1)
    model.blocks[BIND_LAYER].keep_qk = True
    h = model.text(x, batch["pos"], batch["mask"])
    bind = binding_loss(model, batch)
    read = readout_loss(model, batch)
    model.blocks[BIND_LAYER].keep_qk, model.blocks[BIND_LAYER].qk = False, None
    sel = batch["targets"] >= 0
    logits = model.out(h[sel])
    if kind_weights is None:
        loss = F.cross_entropy(logits, batch["targets"][sel])
    else:
        w = torch.tensor(kind_weights)[batch["kinds"][sel]]
        loss = (F.cross_entropy(logits, batch["targets"][sel], reduction="none") * w).sum() / w.sum()
    aux = aux_loss(model, img, batch["aux_c"], batch["aux_s"])
    with torch.no_grad():
        bi = torch.tensor([f[0] for f in batch["first"]])
        ti = torch.tensor([f[1] for f in batch["first"]])
        pred = model.out(h[bi, ti]).argmax(-1)
        ok = (pred == torch.tensor([f[2] for f in batch["first"]])).tolist()
    per_type: dict[str, list[int]] = {}
    for f, o in zip(batch["first"], ok):
        c = per_type.setdefault(f[3], [0, 0])
        c[0] += int(o)
        c[1] += 1
    return loss, aux, bind, read, per_type


# ----------------------------------------------------------------------------------------------------
# greedy answers (PyTorch)


def greedy_answers(model, tok: Tok, images, questions, max_new: int = 4, batch: int = 32,
                   return_logits: bool = False):
    """Greedy decoding of single-question prompts; returns answers (and the first step's logits)."""
    import torch

    prefix = tok.prefix()
    answers, first_logits = [], []
    for s in range(0, len(images), batch):
        imgs, qs = images[s:s + batch], questions[s:s + batch]
        with torch.no_grad():
            emb = model.vision.project(model.vision.features(torch.from_numpy(np.stack([pixels(i) for i in imgs]))))
            seqs = [tok.question(q) for q in qs]
            gen: list[list[int]] = [[] for _ in qs]
            done = [False] * len(qs)
            for step in range(max_new):
                texts = [q + g for q, g in zip(seqs, gen)]
                L = max(len(t) for t in texts)
                ids = torch.zeros(len(qs), L, dtype=torch.long)
                for b, t in enumerate(texts):
                    ids[b, : len(t)] = torch.tensor(t)
                x = torch.cat([model.tok_emb(torch.tensor(prefix)).expand(len(qs), -1, -1), emb, model.tok_emb(ids)], 1)
                T = x.shape[1]
                pos = torch.arange(T).expand(len(qs), -1)
                mask = torch.ones(T, T, dtype=torch.bool).tril()
                h = model.text(x, pos, mask)
                last = torch.tensor([len(prefix) + emb.shape[1] + len(t) - 1 for t in texts])
                logits = model.out(h[torch.arange(len(qs)), last])
                if step == 0:
                    first_logits.append(logits.numpy().copy())
                nxt = logits.argmax(-1).tolist()
                for b, t in enumerate(nxt):
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


def evaluate(model, tok: Tok, examples) -> dict[str, tuple[int, int]]:
    model.eval()
    preds = greedy_answers(model, tok, [e.image for e in examples], [e.question for e in examples])
    model.train()
    return D.accuracy_by_type([(e.qtype, e.answer, p) for e, p in zip(examples, preds)])


def fmt_acc(acc: dict[str, tuple[int, int]]) -> str:
    keys = ["all"] + [t for t in D.QTYPES if t in acc]
    return " ".join(f"{k}={acc[k][0] / max(acc[k][1], 1):.3f}" for k in keys)


# ----------------------------------------------------------------------------------------------------
# train


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p)))


def cmd_train(args) -> int:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = Config()
    tok = Tok(out)
    VLM = build_model(cfg)
    model = VLM(tok.n_vocab)
    named = [(n, p) for n, p in model.named_parameters() if not n.startswith("aux_read")]
    decay = [p for n, p in named if p.dim() >= 2 and "pos" not in n]
    no_decay = [p for n, p in named if not (p.dim() >= 2 and "pos" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-8)
    read_group = {"params": list(model.aux_read.parameters()), "weight_decay": 0.0}
    step, best = 0, -1.0
    ckpt = out / "ckpt.pt"
    if args.resume and ckpt.exists():
        st = torch.load(ckpt, weights_only=False)
        load_weights(model, st["model"])
        if len(st["opt"]["param_groups"]) == 3:
            opt.add_param_group(read_group)
            opt.load_state_dict(st["opt"])
        else:  # a checkpoint from before the read-out probe existed
            opt.load_state_dict(st["opt"])
            opt.add_param_group(read_group)
        step, best = st["step"], st.get("best", -1.0)
        print(f"resumed at step {step} (best val {best:.3f})", flush=True)
    else:
        opt.add_param_group(read_group)
    n_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("aux"))
    print(f"config {asdict(cfg)}\nparams {n_params / 1e6:.2f} M, vocab {tok.n_vocab}, threads {args.threads}", flush=True)
    if step == 0 and args.vit_steps:
        vision_warmup(model, args)
    val = D.generate_split(args.val_n, VAL_SEED)
    t0, tl = time.time(), time.time()
    run = {"loss": 0.0, "aux": 0.0, "bind": 0.0, "read": 0.0, "n": 0, "types": {}}

    def save(path: Path, extra: dict | None = None) -> None:
        tmp = path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "best": best,
                    "config": asdict(cfg), **(extra or {})}, tmp)
        tmp.replace(path)

    kind_weights = None
    if args.kind_weight:
        kw = dict(x.split("=") for x in args.kind_weight.split(","))
        if not set(kw) <= set(D.QTYPES):
            raise SystemExit(f"--kind-weight: kinds are {', '.join(D.QTYPES)}")
        kind_weights = [float(kw.get(t, 1.0)) for t in D.QTYPES]
    while step < min(args.steps, args.stop_at or args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        # curriculum: with one or two shapes the answer is nearly always "the" shape's, and the language
        # model first learns to read the image tokens; then scenes grow to the full 1..4 shapes
        max_objects = min(D.MAX_SHAPES, 2 + step // args.curriculum_steps)
        batch = make_train_batch(step, args.batch, args.k, tok, max_objects)
        loss, aux, bind, read, per_type = forward_train(model, batch, kind_weights)
        aux_w = args.aux_weight if step < args.aux_steps else 0.0
        total = loss + aux_w * aux + args.bind_weight * bind + args.read_weight * read
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        run["loss"] += loss.item()
        run["aux"] += aux.item()
        run["bind"] += bind.item()
        run["read"] += read.item()
        run["n"] += 1
        for t, (c, n) in per_type.items():
            r = run["types"].setdefault(t, [0, 0])
            r[0] += c
            r[1] += n
        if step % args.log_every == 0 or step == args.steps:
            tt = {t: tuple(v) for t, v in run["types"].items()}
            tt["all"] = (sum(v[0] for v in run["types"].values()), sum(v[1] for v in run["types"].values()))
            print(f"step {step} loss {run['loss'] / run['n']:.4f} aux {run['aux'] / run['n']:.4f} "
                  f"bind {run['bind'] / run['n']:.3f} read {run['read'] / run['n']:.3f} "
                  f"lr {opt.param_groups[0]['lr']:.2e} train-tf {fmt_acc(tt)} "
                  f"{(time.time() - tl) / run['n']:.2f}s/step elapsed {(time.time() - t0) / 60:.1f}min", flush=True)
            run = {"loss": 0.0, "aux": 0.0, "bind": 0.0, "read": 0.0, "n": 0, "types": {}}
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
            if args.target and a >= args.target and worst >= args.target - 0.03:
                print(f"target {args.target} reached at step {step}", flush=True)
                break
        elif step % args.save_every == 0:
            save(ckpt)
    save(ckpt)
    print(f"done: step {step}, best val {best:.3f}, {(time.time() - t0) / 60:.1f} min", flush=True)
    return 0


def load_weights(model, state: dict) -> None:
    """Load a state dict; a checkpoint from before the read-out probe (training only) lacks only that."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("aux_read") for k in missing):
        raise RuntimeError(f"checkpoint does not match the model: missing {missing}, unexpected {unexpected}")


def load_model(path: Path):
    import torch

    st = torch.load(path, weights_only=False)
    cfg = Config(**st["config"])
    tok = Tok(Path(path).parent)
    model = build_model(cfg)(tok.n_vocab)
    load_weights(model, st["model"])
    model.eval()
    return cfg, tok, model, st


def cmd_eval(args) -> int:
    import torch

    torch.set_num_threads(args.threads)
    cfg, tok, model, st = load_model(Path(args.ckpt))
    ex = D.generate_split(args.n, args.seed)
    t = time.time()
    acc = evaluate(model, tok, ex)
    print(f"PyTorch, step {st['step']}, seed {args.seed}, n {args.n}: {fmt_acc(acc)} ({time.time() - t:.0f}s)")
    print(json.dumps({k: list(v) for k, v in acc.items()}))
    return 0


# ----------------------------------------------------------------------------------------------------
# export


def export_weights(model, cfg: Config) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The trained weights under GGUF names (numpy, PyTorch layout), as topv_edge.lab.synth writes them."""
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    text: dict[str, np.ndarray] = {
        "token_embd.weight": sd["tok_emb.weight"],
        "output_norm.weight": sd["out_norm.weight"],
        "output.weight": sd["out.weight"],
    }
    names = {"attn_norm": "attn_norm.weight", "attn_q": "q.weight", "attn_k": "k.weight", "attn_v": "v.weight",
             "attn_output": "o.weight", "ffn_norm": "ffn_norm.weight", "ffn_gate": "gate.weight",
             "ffn_up": "up.weight", "ffn_down": "down.weight"}
    for i in range(cfg.n_layer):
        for g, t in names.items():
            text[f"blk.{i}.{g}.weight"] = sd[f"blocks.{i}.{t}"]
    vis: dict[str, np.ndarray] = {
        "v.patch_embd.weight": sd["vision.patch.weight"],
        "v.patch_embd.bias": sd["vision.patch.bias"],
        "v.position_embd.weight": sd["vision.pos"],
        "v.pre_ln.weight": sd["vision.pre_ln.weight"],
        "v.pre_ln.bias": sd["vision.pre_ln.bias"],
        "mm.0.weight": sd["vision.mm0.weight"], "mm.0.bias": sd["vision.mm0.bias"],
        "mm.2.weight": sd["vision.mm2.weight"], "mm.2.bias": sd["vision.mm2.bias"],
    }
    vnames = {"attn_q": "q", "attn_k": "k", "attn_v": "v", "attn_out": "o", "ln1": "ln1", "ln2": "ln2",
              "ffn_up": "up", "ffn_down": "down"}
    for i in range(cfg.v_layer):
        for g, t in vnames.items():
            for kind in ("weight", "bias"):
                vis[f"v.blk.{i}.{g}.{kind}"] = sd[f"vision.blocks.{i}.{t}.{kind}"]
    return text, vis


def cmd_export(args) -> int:
    cfg, tok, model, st = load_model(Path(args.ckpt))
    text_w, vis_w = export_weights(model, cfg)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_path, mmproj_path = out / "demo-vlm.gguf", out / "mmproj-demo-vlm.gguf"
    S.write_text_model(model_path.with_suffix(".tmp"), cfg.text_config(), tok.spec, text_w, args.dtype,
                       name="topv-edge demo VLM")
    S.write_mmproj(mmproj_path.with_suffix(".tmp"), cfg.vision_config(), cfg.n_embd, vis_w, args.dtype,
                   name="topv-edge demo VLM mmproj")
    model_path.with_suffix(".tmp").replace(model_path)
    mmproj_path.with_suffix(".tmp").replace(mmproj_path)
    picture = write_demo_picture(out)
    for p in (model_path, mmproj_path, picture, picture.with_suffix(".json")):
        print(f"{p} {p.stat().st_size / 1e6:.2f} MB")
    return 0


DEMO_PICTURE_SEED = 3  # an evaluation seed (never trained on)


def write_demo_picture(out: Path) -> Path:
    """demo.png (the picture `chat --demo` shows the model) and demo.json (its questions and answers):
    the first scene of seed DEMO_PICTURE_SEED with three shapes, one question of each type it allows."""
    for i in range(1000):
        rng = D.example_rng(DEMO_PICTURE_SEED, i)
        scene = D.make_scene(rng)
        if len(scene.objects) == 3 and len(D.available_qtypes(scene)) == len(D.QTYPES):
            break
    img, _ = D.render(scene)
    path = out / "demo.png"
    img.save(path)
    qa = [dict(zip(("question", "answer", "kind"), D.ask(scene, rng, t))) for t in D.QTYPES]
    path.with_suffix(".json").write_text(json.dumps(qa, indent=1) + "\n")
    return path


# ----------------------------------------------------------------------------------------------------
# llama.cpp side (stock llama-cpp-python through the low-level mtmd API)


_NO_LOG = llama_cpp.llama_log_callback(lambda level, text, user_data: None)


class LlamaCppVLM:
    """Single-question greedy answers and first-token logits from llama.cpp (TopV off: the stock code path)."""

    def __init__(self, model_path: Path, mmproj_path: Path, threads: int = 1, n_ctx: int = 512,
                 verbose: bool = False) -> None:
        import llama_cpp.mtmd_cpp as M

        self.M = M
        llama_cpp.llama_backend_init()
        if not verbose:
            M.mtmd_log_set(_NO_LOG, None)
            M.mtmd_helper_log_set(_NO_LOG, None)
        self.llm = llama_cpp.Llama(str(model_path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=threads,
                                   n_threads_batch=threads, verbose=False, logits_all=False)
        self.template = compile_chat_template(self.llm.metadata["tokenizer.chat_template"])  # the exported one
        p = M.mtmd_context_params_default()
        p.use_gpu = False
        p.n_threads = threads
        p.print_timings = False
        p.warmup = False
        self.mctx = M.mtmd_init_from_file(str(mmproj_path).encode(), self.llm.model, p)
        if not self.mctx:
            raise RuntimeError("mtmd_init_from_file failed")
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.eos = llama_cpp.llama_vocab_eos(self.vocab)

    def close(self) -> None:
        if self.mctx:
            self.M.mtmd_free(self.mctx)
            self.mctx = None
        self.llm.close()

    def _logits(self) -> np.ndarray:
        ptr = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, (self.n_vocab,)).copy()

    def ask(self, image_path: str, question: str, max_new: int = 4) -> tuple[str, np.ndarray]:
        import ctypes

        M = self.M
        prompt = render_prompt(self.template, question)
        bmp = M.mtmd_helper_bitmap_init_from_file(self.mctx, str(image_path).encode(), False)
        if not bmp:
            raise RuntimeError(f"cannot read {image_path}")
        chunks = M.mtmd_input_chunks_init()
        try:
            text = M.mtmd_input_text()
            raw = prompt.encode()
            text.text = raw
            text.text_len = len(raw)
            text.add_special = True
            text.parse_special = True
            arr = (M.mtmd_bitmap_p_ctypes * 1)(bmp)
            rc = M.mtmd_tokenize(self.mctx, chunks, ctypes.byref(text), arr, 1)
            if rc != 0:
                raise RuntimeError(f"mtmd_tokenize failed ({rc})")
            mem = llama_cpp.llama_get_memory(self.llm.ctx)
            llama_cpp.llama_memory_clear(mem, True)
            n_past = llama_cpp.llama_pos(0)
            new_past = llama_cpp.llama_pos(0)
            rc = M.mtmd_helper_eval_chunks(self.mctx, self.llm.ctx, chunks, n_past, 0, self.llm.n_batch, True,
                                           ctypes.byref(new_past))
            if rc != 0:
                raise RuntimeError(f"mtmd_helper_eval_chunks failed ({rc})")
            n_past = new_past.value
        finally:
            M.mtmd_input_chunks_free(chunks)
            M.mtmd_bitmap_free(bmp)
        first = self._logits()
        logits, out = first, []
        batch = llama_cpp.llama_batch_init(1, 0, 1)
        try:
            for _ in range(max_new):
                t = int(np.argmax(logits))
                if t == self.eos:
                    break
                out.append(t)
                batch.n_tokens = 1
                batch.token[0] = t
                batch.pos[0] = n_past
                batch.n_seq_id[0] = 1
                batch.seq_id[0][0] = 0
                batch.logits[0] = True
                if llama_cpp.llama_decode(self.llm.ctx, batch) != 0:
                    raise RuntimeError("llama_decode failed")
                n_past += 1
                logits = self._logits()
        finally:
            llama_cpp.llama_batch_free(batch)
        text = b"".join(self.llm.detokenize([t]) for t in out).decode("utf-8", "replace")
        return text, first


def _eval_rows(args) -> list[dict]:
    if args.data:
        return D.read_jsonl(Path(args.data) / "data.jsonl")
    return D.read_jsonl(D.cached_split(REPO / "build" / "eval", args.n, args.seed))


def cmd_verify(args) -> int:
    """Same questions through PyTorch and llama.cpp: greedy answers must match, first-token logits close."""
    import torch
    from PIL import Image

    torch.set_num_threads(args.threads)
    cfg, tok, model, st = load_model(Path(args.ckpt))
    out = Path(args.out)
    rows = _eval_rows(args)
    imgs = [Image.open(r["image"]).convert("RGB") for r in rows]
    pt_ans, pt_logits = greedy_answers(model, tok, imgs, [r["question"] for r in rows], return_logits=True)
    vlm = LlamaCppVLM(out / "demo-vlm.gguf", out / "mmproj-demo-vlm.gguf", threads=args.threads)
    agree, max_diff, worst_rel = 0, 0.0, 0.0
    try:
        for r, pa, pl in zip(rows, pt_ans, pt_logits):
            la, ll = vlm.ask(r["image"], r["question"])
            agree += int(pa == la)
            d = float(np.abs(ll - pl).max())
            max_diff = max(max_diff, d)
            worst_rel = max(worst_rel, d / float(np.abs(pl).max()))
            if pa != la:
                print(f"MISMATCH {r['image']} {r['question']!r}: torch {pa!r} llama.cpp {la!r}")
    finally:
        vlm.close()
    n = len(rows)
    print(f"verify, {n} questions: {agree}/{n} greedy answers agree; first-token logits max |diff| "
          f"{max_diff:.4f} (at most {100 * worst_rel:.2f} % of the question's largest |logit|)")
    return 0 if agree == n else 1


def cmd_llama_eval(args) -> int:
    rows = _eval_rows(args)
    out = Path(args.out)
    vlm = LlamaCppVLM(out / "demo-vlm.gguf", out / "mmproj-demo-vlm.gguf", threads=args.threads)
    res = []
    t = time.time()
    try:
        for r in rows:
            a, _ = vlm.ask(r["image"], r["question"])
            res.append((r["kind"], r["answer"], a))
    finally:
        vlm.close()
    acc = D.accuracy_by_type(res)
    print(f"llama.cpp (unpruned), {len(rows)} examples: {fmt_acc(acc)} ({time.time() - t:.0f}s)")
    print(json.dumps({k: list(v) for k, v in acc.items()}))
    return 0


# ----------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--out", default=str(OUT_DIR))
    t.add_argument("--steps", type=int, default=3000)
    t.add_argument("--batch", type=int, default=8, help="pictures per step")
    t.add_argument("--k", type=int, default=6, help="questions per picture (packed branches)")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--warmup", type=int, default=100)
    t.add_argument("--aux-weight", type=float, default=0.5)
    t.add_argument("--bind-weight", type=float, default=1.0, help="weight of the binding (attention) loss")
    t.add_argument("--read-weight", type=float, default=0.0,
                   help="weight of the read-out loss (colour and shape of the named object from the binding head)")
    t.add_argument("--kind-weight", default="",
                   help="answer-loss weight per question kind, e.g. shape=3,exists=3 (others 1)")
    t.add_argument("--vit-steps", type=int, default=300, help="ViT-only warm-up steps before the main phase")
    t.add_argument("--curriculum-steps", type=int, default=300,
                   help="scenes have at most 2 shapes for this many steps, 3 for as many again, then 4")
    t.add_argument("--vit-batch", type=int, default=32, help="pictures per warm-up step")
    t.add_argument("--aux-steps", type=int, default=10 ** 9, help="use the auxiliary loss for this many steps")
    t.add_argument("--val-n", type=int, default=600)
    t.add_argument("--eval-every", type=int, default=250)
    t.add_argument("--save-every", type=int, default=50)
    t.add_argument("--log-every", type=int, default=25)
    t.add_argument("--target", type=float, default=0.0, help="stop once val accuracy reaches this (0: never)")
    t.add_argument("--seed", type=int, default=0, help="torch seed (initialisation)")
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt")
    t.add_argument("--stop-at", type=int, default=0,
                   help="stop after this step (the schedule still runs to --steps; continue with --resume)")
    for name in ("eval", "export", "verify", "llama-eval"):
        p = sub.add_parser(name)
        p.add_argument("--ckpt", default=str(OUT_DIR / "best.pt"))
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("-o", "--out", default=str(REPO / "topv_edge" / "demo_model"))
        p.add_argument("--n", type=int, default=600)
        p.add_argument("--seed", type=int, default=VAL_SEED if name == "eval" else TEST_SEED)
        p.add_argument("--data", help="an eval set written by scripts/gen_eval_set.py (default: generated)")
        if name == "export":
            p.add_argument("--dtype", choices=["f32", "f16"], default="f16")
    args = ap.parse_args(argv)
    return {"train": cmd_train, "eval": cmd_eval, "export": cmd_export, "verify": cmd_verify,
            "llama-eval": cmd_llama_eval}[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
