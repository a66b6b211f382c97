"""The demo VLM: a small LLaVA-1.5-style model trained on topv_edge.lab.data.demo, whose GGUF pair (llama text
model + `mlp` mmproj) llama.cpp runs at the pinned commit (0c1e57098bba). Model card: docs/demo_model.md.

The shipped model (46 minutes on 2 cores; the read-out loss joined the recipe at step 3000):

    python -m topv_edge.lab.train demo train --steps 6000 --eval-every 500 --threads 2 --kind-weight shape=3,exists=3 --stop-at 3000
    python -m topv_edge.lab.train demo train --resume --steps 6000 --eval-every 500 --threads 2 \\
        --kind-weight shape=3,exists=3 --read-weight 1 --target 0.95

What the PyTorch model computes is what llama.cpp computes for such a pair:
- vision (clip.cpp `clip_graph_llava`): conv patch embedding with bias, learned position table
  (no class embedding), `v.pre_ln` LayerNorm, pre-norm blocks (LayerNorm eps 1e-5, attention with
  q/k/v/out biases and scale 1/sqrt(d_head), no mask; FFN up -> GELU (tanh form, ggml_gelu, as
  clip.use_gelu selects) -> down, biases), no post-layernorm, and the projector is fed by the
  output of block n_layer-2 (the "penultimate layer" of LLaVA: the writer stores n_layer-1 blocks). The
  last block is never run (kept at its random init, never exported);
- projector `mlp`: mm.0 -> GELU (tanh) -> mm.2;
- preprocessing: pictures are already 168 x 168 (llama.cpp copies an image of the right size
  unchanged), pixel / 255, then (x - mean) / std per channel with CLIP's mean/std;
- text (llama): RMSNorm eps 1e-5, RoPE "normal" mode (adjacent pairs), base 10000, causal
  attention (image tokens included), SwiGLU FFN, untied output; image embeddings are input
  embeddings at consecutive positions after the text before the media marker.
Prompt (the GGUF's chat template): "<s>USER: " + 144 image embeddings + "{question}\\nASSISTANT:",
answer " {word}</s>".

Recipe: a per-patch auxiliary head on the image tokens (colour and shape of the object covering each patch,
the patch's row and column; not exported), a ViT-only warm-up, a curriculum on the number of shapes, a
binding loss (attention heads of the answer position pulled towards the patches of the object the question
names, or towards every object for "how many") and a read-out loss (that head's output must tell the named
object's colour and shape) make it learn within an hour. Runs and figures: docs/demo_model.md.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...session.templates import LLAVA15_TEMPLATE
from .. import synth as S
from ..data import demo as D
from .layers import VLM, VBlock, gelu
from .recipe import REPO, TRAIN_SEED_BASE, VIT_SEED_BASE, Branch, ModelDef, read_head
from .tokenizer import Tok, TokenizerSpec

BIND_HEAD = 0      # the attention head the binding loss trains on object questions
COUNT_HEAD = 1     # ... and the one it trains on "how many" questions


def sincos_2d(grid: int, d: int) -> torch.Tensor:
    """[grid*grid, d] 2-D sine-cosine position table (row-major patches): x in the first half, y in the second."""
    q = d // 4
    omega = 1.0 / (100.0 ** (np.arange(q) / q))
    y, x = (a.reshape(-1, 1) for a in np.mgrid[0:grid, 0:grid])
    table = np.concatenate([np.sin(x * omega), np.cos(x * omega), np.sin(y * omega), np.cos(y * omega)], 1)
    return torch.tensor(table, dtype=torch.float32)


class Vision(nn.Module):
    """CLIP-style ViT with a position table and the `mlp` projector; runs every block but the last."""

    def __init__(self, cfg: S.VisionConfig, n_embd_text: int) -> None:
        super().__init__()
        d, g = cfg.n_embd, cfg.grid
        self.patch = nn.Conv2d(3, d, cfg.patch_size, stride=cfg.patch_size, bias=True)
        self.pos = nn.Parameter(torch.randn(g * g, d) * 0.02)
        self.pre_ln = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.blocks = nn.ModuleList(VBlock(cfg) for _ in range(cfg.n_layer))
        self.mm0 = nn.Linear(d, cfg.proj_hidden)
        self.mm2 = nn.Linear(cfg.proj_hidden, n_embd_text)

    def forward(self, pix: torch.Tensor) -> torch.Tensor:
        x = self.patch(pix).flatten(2).transpose(1, 2)  # (B, N, d), patch index = row * grid + col
        x = self.pre_ln(x + self.pos)
        for blk in self.blocks[:-1]:                     # llama.cpp stops before the last block
            x = blk(x)
        return self.mm2(gelu(self.mm0(x)))


def rope_normal(base: float) -> "callable":
    """llama.cpp's normal mode: pairs (2i, 2i+1), theta = pos * base^(-2i/hd); x (B, h, L, hd), pos (B, L)."""
    def rope(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        hd = x.shape[-1]
        inv = base ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
        ang = (pos.to(torch.float64)[..., None] * inv).to(x.dtype)[:, None]  # (B, 1, L, hd/2)
        c, s = ang.cos(), ang.sin()
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)
    return rope


def labelled_picture(defn: "DemoDef", rng: np.random.Generator, n_objects: int | None = None):
    """(scene, model input pixels, per-patch labels {"color", "shape"}, anchors) of a new scene; anchors: one
    patch per object (the one it covers most, first in raster order)."""
    scene = D.make_scene(rng, n_objects)
    img, mask = D.render(scene)
    p = D.PATCH_SIZE
    m = mask.reshape(D.GRID, p, D.GRID, p).transpose(0, 2, 1, 3).reshape(D.GRID * D.GRID, p * p)
    anchors = [int(np.argmax((m == k + 1).mean(1))) for k in range(len(scene.objects))]
    colours, shapes = D.patch_labels(scene, mask)
    return scene, defn.pixels(img), {"color": colours, "shape": shapes}, anchors


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


def binding_target(named, qtype: str, labels: dict, anchors, n_prefix: int):
    """(head, distribution over the prefix and image tokens) the binding loss pulls towards, or None: the
    patches of the object the question names (BIND_HEAD), or, for "how many", the first token and one patch
    per object in equal parts (COUNT_HEAD: the share left on the first token then says the count)."""
    t = np.zeros(n_prefix + D.GRID * D.GRID, np.float32)
    if qtype == "count":
        t[0] = 1.0
        t[n_prefix + np.asarray(anchors)] = 1.0
        return COUNT_HEAD, t / t.sum()
    if named is None:
        return None
    where = (labels["color"] == 1 + list(D.COLORS).index(named.color)) & (labels["shape"] == 1 + D.SHAPES.index(named.shape))
    if not where.any():  # the object covers no patch enough to be labelled
        return None
    where = where.astype(np.float32)
    t[n_prefix:] = where / where.sum()
    return BIND_HEAD, t


class DemoDef(ModelDef):
    name = "demo"
    title = "topv-edge demo VLM"
    data = D
    kinds = D.QTYPES
    text = S.TextConfig(arch="llama", n_embd=256, n_ff=512, n_layer=4, n_head=4, n_head_kv=4, rope_base=10000.0,
                        rms_eps=1e-5, n_ctx_train=2048)
    # 5 ViT blocks: the mlp writer stores 4 (the projector reads block 3's output), the last is never run
    vision = S.VisionConfig(projector="mlp", image_size=D.IMAGE_SIZE, patch_size=D.PATCH_SIZE, n_embd=192, n_ff=768,
                            n_layer=5, n_head=3, ln_eps=1e-5, proj_hidden=256, class_embedding=False)  # CLIP's mean / std (the defaults)
    tokenizer = TokenizerSpec(("<s>", "</s>"), LLAVA15_TEMPLATE, " ".join(D.VOCAB_WORDS))
    model_dir = REPO / "topv_edge" / "demo_model"
    model_file, mmproj_file = "demo-vlm.gguf", "mmproj-demo-vlm.gguf"
    max_new = 4
    target_slack = 0.03
    deterministic = True
    unstored = (f"vision.blocks.{vision.n_layer - 1}.",)
    train_defaults = dict(steps=3000, k=6, read_weight=0.0, vit_steps=300, vit_batch=32, val_n=600)

    def build(self, n_vocab: int) -> VLM:
        cfg, e = self.text, self.text.n_embd
        model = VLM(Vision(self.vision, e), cfg, rope_normal(cfg.rope_base), n_vocab, lambda: {
            # per image token (on the projector's output, what the language model reads)
            "aux_color": nn.Linear(e, 1 + len(D.COLORS)),
            "aux_shape": nn.Linear(e, 1 + len(D.SHAPES)),
            "aux_col": nn.Linear(e, D.GRID),   # the patch's column and row: left/right and
            "aux_row": nn.Linear(e, D.GRID),   # top/bottom need them in the image tokens
            # colour and shape of the named object from the binding head's read-out (readout_loss)
            "aux_read": nn.Linear(cfg.head_dim, len(D.COLORS) + len(D.SHAPES)),
        })
        # 2-D sin-cos start for the position table (as MAE does): attention can be local from step 0
        with torch.no_grad():
            model.vision.pos.copy_(sincos_2d(self.vision.grid, self.vision.n_embd))
        return model

    def head_positions(self, n0: int) -> np.ndarray:
        return np.arange(n0 + self.n_img)

    def text_start(self, n0: int) -> int:
        return n0 + self.n_img

    def text_positions(self, start: int, n: int) -> np.ndarray:
        return np.arange(start, start + n)

    def add_train_args(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--curriculum-steps", type=int, default=300,
                       help="scenes have at most 2 shapes for this many steps, 3 for as many again, then 4")

    def optimizer_groups(self, model: VLM) -> list[dict]:
        named = [(n, p) for n, p in model.named_parameters() if not n.startswith("aux_read")]
        decay = [p for n, p in named if p.dim() >= 2 and "pos" not in n]
        no_decay = [p for n, p in named if not (p.dim() >= 2 and "pos" not in n)]
        return [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0},
                {"params": list(model.aux_read.parameters()), "weight_decay": 0.0}]

    def pictures(self, step: int, args: argparse.Namespace, tok: Tok):
        # curriculum: with one or two shapes the answer is nearly always "the" shape's, and the language
        # model first learns to read the image tokens; then scenes grow to the full 1..4 shapes
        max_objects = min(D.MAX_SHAPES, 2 + step // args.curriculum_steps)
        n_prefix = len(tok.prefix())
        pix, labels, rows = [], [], []
        for i in range(args.batch):
            rng = D.example_rng(TRAIN_SEED_BASE + step, i)
            scene, x, lab, anchors = labelled_picture(self, rng, int(rng.integers(1, max_objects + 1)))
            pix.append(x)
            labels.append(lab)
            branches = []
            for q, a, t in D.ask_many(scene, rng, args.k):
                o = named_object(scene, q, t)
                bt = binding_target(o, t, lab, anchors, n_prefix)
                read = [] if o is None else [(list(D.COLORS).index(o.color), D.SHAPES.index(o.shape))]
                branches.append(Branch(tok.question(q), tok.answer(a), t, [] if bt is None else [bt], read))
            rows.append(branches)
        return pix, labels, rows

    def vision_batch(self, step: int, n: int):
        pics = [labelled_picture(self, D.example_rng(VIT_SEED_BASE + step, i)) for i in range(n)]
        return (torch.from_numpy(np.stack([p[1] for p in pics])),
                {k: torch.from_numpy(np.stack([p[2][k] for p in pics])) for k in ("color", "shape")})

    def token_loss(self, model: VLM, img: torch.Tensor, labels: dict) -> torch.Tensor:
        """Per-patch colour and shape of the covering object (0: background), and the patch's column and row.
        Most patches are background, so the shape, column and row terms are also taken over object patches
        alone: without them the ViT does not learn shapes, and object patches lose their position (46 %
        column accuracy on object patches vs 99.6 % on background, and left/right at chance)."""
        colours, shapes = labels["color"], labels["shape"]
        obj = colours > 0
        ls = model.aux_shape(img)
        n = img.shape[1]
        col = (torch.arange(n) % D.GRID).expand(img.shape[0], n)
        row = (torch.arange(n) // D.GRID).expand(img.shape[0], n)
        return (F.cross_entropy(model.aux_color(img).flatten(0, 1), colours.flatten())
                + F.cross_entropy(ls.flatten(0, 1), shapes.flatten()) + 2.0 * F.cross_entropy(ls[obj], shapes[obj])
                + 0.5 * F.cross_entropy(model.aux_col(img).flatten(0, 1), col.flatten())
                + 0.5 * F.cross_entropy(model.aux_row(img).flatten(0, 1), row.flatten())
                + F.cross_entropy(model.aux_col(img)[obj], col[obj]) + F.cross_entropy(model.aux_row(img)[obj], row[obj]))

    def warmup_report(self, model: VLM, img: torch.Tensor, labels: dict) -> str:
        obj = labels["color"] > 0
        acc_s = (model.aux_shape(img)[obj].argmax(-1) == labels["shape"][obj]).float().mean().item()
        acc_c = (model.aux_color(img)[obj].argmax(-1) == labels["color"][obj]).float().mean().item()
        col = (torch.arange(img.shape[1]) % D.GRID).expand(img.shape[0], -1)
        acc_x = (model.aux_col(img)[obj].argmax(-1) == col[obj]).float().mean().item()
        return f"object patches: colour {acc_c:.3f} shape {acc_s:.3f} column {acc_x:.3f}"

    def readout_loss(self, model: VLM, batch: dict) -> torch.Tensor:
        """Cross-entropy of the colour and the shape of the object a question names, predicted by a linear
        probe from what the binding head reads there. The binding loss teaches the head where to look; this
        teaches its value path to carry what the answer needs (without it, shape answers lag colour answers for
        thousands of steps while the image tokens themselves hold the shape). Training only."""
        if not batch["read"]:
            return torch.zeros(())
        out = model.aux_read(read_head(self, model, batch["read"], BIND_HEAD, batch["n_prefix"]))
        nc = len(D.COLORS)
        return (F.cross_entropy(out[:, :nc], torch.tensor([x[2] for x in batch["read"]]))
                + F.cross_entropy(out[:, nc:], torch.tensor([x[3] for x in batch["read"]])))

    def demo_scene_ok(self, scene) -> bool:
        return len(scene.objects) == 3 and len(D.available_qtypes(scene)) == len(D.QTYPES)
