"""The second demo VLM: a small Qwen2-VL-style model (text arch `qwen2vl` with M-RoPE, mmproj `qwen2vl_merger`
with 2-D RoPE ViT and 2 x 2 patch merger) trained on topv_edge.lab.data.scenes. Model card: docs/demo_model2.md.

The shipped model (36 minutes on the shared 2-core machine; docs/demo_model2.md):

    python -m topv_edge.lab.train scenes train --steps 2000 --lr 1.5e-3 --eval-every 250 --target 0.96 --stop-at 600
    python -m topv_edge.lab.train scenes train --resume --steps 2000 --lr 1.5e-3 --eval-every 250 --target 0.96 --kind-weight left=3,above=3

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
  rotated by position section(i) * base^(-2i/d), sections (t, h, w) = rope_sections; SwiGLU, untied
  output; attention causal in sequence order (llama.cpp masks image tokens of equal t by raster order,
  which is the sequence order);
- positions (mtmd M-RoPE): the n0 text tokens before the image at 0..n0-1 (all sections equal); image
  token (r, c) at t = n0, h = n0 + r, w = n0 + c; the text after the image from n0 + max(rows, cols).
Prompt (ChatML, the template the GGUF carries): "<|im_start|>user\\n<|vision_start|>" + 64 image
embeddings + "<|vision_end|>{question}<|im_end|>\\n<|im_start|>assistant\\n", answer " {word}<|im_end|>".

Recipe (the first demo model's, topv_edge.lab.train.demo): a ViT warm-up on per-token heads, a binding loss
(heads of layer bind_layer at the answer position pulled to the named objects' tokens) and a read-out loss
(what those heads read must tell the named object's colour, shape, character and position). A per-token
probe on the image tokens after text layer 0 asks for their row and column, which the ViT cannot know (no
position table, relative RoPE only) and the text model gets from M-RoPE: the left/above questions need it.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...session.templates import CHATML_TEMPLATE
from .. import synth as S
from ..data import scenes as D
from .layers import VLM, VBlock, gelu, rotate_neox
from .recipe import REPO, TRAIN_SEED_BASE, VIT_SEED_BASE, Branch, ModelDef, read_head
from .tokenizer import Tok, TokenizerSpec

HEAD_A, HEAD_B = 0, 1   # binding heads: the first named object (or the box), the second / count
N_IMG = D.GRID * D.GRID


def vision_rope(cfg: S.VisionConfig):
    """clip.cpp's 2-D "vision" RoPE of the ViT's patches in merger order: x (B, N, h, hd)."""
    g_tok = cfg.grid // D.MERGE
    yb, xb, dy, dx = np.meshgrid(np.arange(g_tok), np.arange(g_tok), [0, 1], [0, 1], indexing="ij")
    rows = torch.tensor((2 * yb + dy).reshape(-1), dtype=torch.float64)
    cols = torch.tensor((2 * xb + dx).reshape(-1), dtype=torch.float64)
    q4 = cfg.n_embd // cfg.n_head // 4
    inv = 10000.0 ** (-torch.arange(q4, dtype=torch.float64) / q4)
    ang = torch.cat((rows[:, None] * inv, cols[:, None] * inv), 1)[:, None]  # (N, 1, hd/2)
    return lambda x: rotate_neox(x, ang)


def mrope(cfg: S.TextConfig):
    """M-RoPE: pair i rotated by pos3[..., section(i)] * base^(-2i/hd); x (B, h, L, hd), pos3 (B, L, 3)."""
    hd = cfg.head_dim
    sec = torch.tensor(np.repeat([0, 1, 2, 3], cfg.rope_sections)[: hd // 2], dtype=torch.long).clamp(max=2)
    inv = cfg.rope_base ** (-2.0 * torch.arange(hd // 2, dtype=torch.float64) / hd)
    return lambda x, pos3: rotate_neox(x, (pos3.to(torch.float64)[..., sec] * inv)[:, None])


class Vision(nn.Module):
    """Qwen2-VL's ViT (2-D RoPE, no position table, post-LayerNorm) and its 2 x 2 merger."""

    def __init__(self, cfg: S.VisionConfig, n_embd_text: int) -> None:
        super().__init__()
        d = cfg.n_embd
        self.g_patch, self.g_tok = cfg.grid, cfg.grid // D.MERGE
        self.patch = nn.Conv2d(3, d, cfg.patch_size, stride=cfg.patch_size, bias=False)
        rope = vision_rope(cfg)
        self.blocks = nn.ModuleList(VBlock(cfg, rope) for _ in range(cfg.n_layer))
        self.post_ln = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.mm0 = nn.Linear(4 * d, 4 * d)
        self.mm2 = nn.Linear(4 * d, n_embd_text)

    def forward(self, pix: torch.Tensor) -> torch.Tensor:
        x = self.patch(pix)                                   # (B, d, 16, 16)
        B, d = x.shape[:2]
        g, gp = self.g_tok, self.g_patch
        x = x.view(B, d, g, 2, g, 2).permute(0, 2, 4, 3, 5, 1).reshape(B, gp * gp, d)
        for blk in self.blocks:
            x = blk(x)
        x = self.post_ln(x).reshape(B, g * g, 4 * d)          # 4 consecutive patches = one token
        # ggml's GELU saturates: exactly x beyond |x| >= 10
        y = self.mm0(x)
        return self.mm2(torch.where(y.abs() >= 10, (y > 0) * y, gelu(y)))


def image_positions(n0: int) -> np.ndarray:
    """(64, 3) M-RoPE positions (t, h, w) of the image tokens after n0 text tokens (mtmd's layout)."""
    r, c = np.divmod(np.arange(N_IMG), D.GRID)
    return np.stack([np.full_like(r, n0), n0 + r, n0 + c], 1)


def bind_entries(kind: str, named: tuple, scene, n_prefix: int) -> list[tuple[int, np.ndarray]]:
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
    Positions are object centres / IMAGE_SIZE."""
    nan = float("nan")
    if kind == "read":
        return -1, -1, D.CHARS.index(scene.box[2]), nan, nan, nan, nan
    if kind == "count":
        return -1, -1, -1, nan, nan, nan, nan
    a = named[0]
    ax, ay = a.cx / D.IMAGE_SIZE, a.cy / D.IMAGE_SIZE
    bx, by = (named[1].cx / D.IMAGE_SIZE, named[1].cy / D.IMAGE_SIZE) if len(named) > 1 else (nan, nan)
    return list(D.COLORS).index(a.color), D.SHAPES.index(a.shape), -1, ax, ay, bx, by


def labelled_scene(defn: "ScenesDef", rng: np.random.Generator):
    """(scene, model input pixels, per-token labels) of a new scene."""
    scene = D.make_scene(rng)
    img, mask = D.render(scene)
    return scene, defn.pixels(img), D.cell_labels(scene, mask)


class ScenesDef(ModelDef):
    name = "scenes"
    title = "topv-edge scenes VLM"
    data = D
    # a small rope base: with 10000 the column section (the last, lowest frequencies) turns by < 0.003 rad per
    # column and the text model can hardly tell columns apart; with 50 it turns by 0.02 - 0.1 rad
    text = S.TextConfig(arch="qwen2vl", n_embd=192, n_ff=512, n_layer=4, n_head=4, n_head_kv=4, rope_base=50.0,
                        rms_eps=1e-6, n_ctx_train=2048, rope_sections=(4, 10, 10, 0))
    vision = S.VisionConfig(projector="qwen2vl_merger", image_size=D.IMAGE_SIZE, patch_size=D.PATCH_SIZE, n_embd=96,
                            n_ff=384, n_layer=3, n_head=4, ln_eps=1e-6, spatial_merge=D.MERGE,
                            hidden_act="quick_gelu")  # Qwen2-VL's ViT activation
    # mtmd wraps the image in <|vision_start|> ... <|vision_end|>, which the prompt pieces include; no BOS
    tokenizer = TokenizerSpec(("<|endoftext|>", "<|im_end|>", "<|im_start|>", "<|vision_start|>", "<|vision_end|>",
                               "<|image_pad|>"), CHATML_TEMPLATE, " ".join(D.VOCAB_WORDS), add_bos=False,
                              image_begin="<|vision_start|>", image_end="<|vision_end|>")
    model_dir = REPO / "topv_edge" / "lab" / "models" / "scenes"
    model_file, mmproj_file = "scenes-vlm.gguf", "mmproj-scenes-vlm.gguf"
    max_new = 3
    target_slack = 0.05
    max_rel_logit_diff = 0.02
    train_defaults = dict(steps=2500, k=5, read_weight=1.0, vit_steps=150, vit_batch=16, val_n=300)
    eval_threads = 2
    warmup_params = ("vision.", "aux_color", "aux_shape", "aux_char")

    def build(self, n_vocab: int) -> VLM:
        e, hd, g = self.text.n_embd, self.text.head_dim, D.GRID
        return VLM(Vision(self.vision, e), self.text, mrope(self.text), n_vocab, lambda: {
            # per image token, on the projector output ...
            "aux_color": nn.Linear(e, 1 + len(D.COLORS)),
            "aux_shape": nn.Linear(e, 1 + len(D.SHAPES)),
            "aux_char": nn.Linear(e, 1 + len(D.CHARS)),
            # ... and on the image tokens after text layer 0 (their row and column) ...
            "aux_row": nn.Linear(e, g),
            "aux_col": nn.Linear(e, g),
            # ... and what the binding heads read at the answer position
            "aux_read": nn.Linear(hd, len(D.COLORS) + len(D.SHAPES) + len(D.CHARS) + 2),
            "aux_read_b": nn.Linear(hd, 2),
        })

    def head_positions(self, n0: int) -> np.ndarray:
        return np.concatenate([self.text_positions(0, n0), image_positions(n0)])

    def text_start(self, n0: int) -> int:
        return n0 + D.GRID           # max(rows, cols) of the image token grid

    def text_positions(self, start: int, n: int) -> np.ndarray:
        return np.repeat(np.arange(start, start + n)[:, None], 3, 1)

    def extra_mmproj_weights(self, vision: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"v.patch_embd.weight.1": np.zeros_like(vision["v.patch_embd.weight"])}  # a still image: frame 2 adds 0

    def optimizer_groups(self, model: VLM) -> list[dict]:
        decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
        return [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}]

    def pictures(self, step: int, args: argparse.Namespace, tok: Tok):
        n0 = len(tok.prefix())
        pix, labels, rows = [], [], []
        for i in range(args.batch):
            rng = D.example_rng(TRAIN_SEED_BASE + step, i)
            scene, x, lab = labelled_scene(self, rng)
            pix.append(x)
            labels.append(lab)
            rows.append([Branch(tok.question(q), tok.answer(a), t, bind_entries(t, named, scene, n0),
                                [read_targets(t, named, scene)])
                         for q, a, t, named in D.ask_many(scene, rng, args.k)])
        return pix, labels, rows

    def vision_batch(self, step: int, n: int):
        pics = [labelled_scene(self, D.example_rng(VIT_SEED_BASE + step, i)) for i in range(n)]
        return (torch.from_numpy(np.stack([p[1] for p in pics])),
                {k: torch.from_numpy(np.stack([p[2][k] for p in pics])) for k in pics[0][2]})

    def _token_heads(self, model: VLM) -> tuple:
        return (("color", model.aux_color), ("shape", model.aux_shape), ("char", model.aux_char))

    def token_loss(self, model: VLM, img: torch.Tensor, labels: dict) -> torch.Tensor:
        """Per image token: colour / shape of the covering object, the box's character (0: none); the object
        and box tokens weigh extra (most tokens are background)."""
        loss = 0.0
        for key, head in self._token_heads(model):
            logits, y = head(img), labels[key]
            loss = loss + F.cross_entropy(logits.flatten(0, 1), y.flatten())
            sel = y > 0
            if sel.any():
                loss = loss + 2.0 * F.cross_entropy(logits[sel], y[sel])
        return loss

    def warmup_report(self, model: VLM, img: torch.Tensor, labels: dict) -> str:
        accs = []
        for key, head in self._token_heads(model):
            sel = labels[key] > 0
            accs.append(f"{key} {(head(img)[sel].argmax(-1) == labels[key][sel]).float().mean().item():.3f}")
        return f"object tokens: {' '.join(accs)}"

    def aux_loss(self, model: VLM, img: torch.Tensor, labels: dict, h0: torch.Tensor, n_prefix: int) -> torch.Tensor:
        """The per-token loss, and the row and column of each image token from its state after text layer 0."""
        x = h0[:, n_prefix:n_prefix + N_IMG]
        r, c = np.divmod(np.arange(N_IMG), D.GRID)
        r = torch.from_numpy(r).expand(x.shape[0], -1)
        c = torch.from_numpy(c).expand(x.shape[0], -1)
        return self.token_loss(model, img, labels) + (F.cross_entropy(model.aux_row(x).flatten(0, 1), r.flatten())
                                                      + F.cross_entropy(model.aux_col(x).flatten(0, 1), c.flatten()))

    def readout_loss(self, model: VLM, batch: dict) -> torch.Tensor:
        """What heads HEAD_A and HEAD_B read at the answer position (attention times values) must tell the
        named object's colour, shape and centre, the box's character, and the second object's centre."""
        rd = [x for x in batch["read"] if x[2] >= 0 or x[4] >= 0]
        if not rd:
            return torch.zeros(())
        n0 = batch["n_prefix"]
        loss = torch.zeros(())
        out = model.aux_read(read_head(self, model, rd, HEAD_A, n0))
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
            outb = model.aux_read_b(read_head(self, model, [x for x, o in zip(rd, ok.tolist()) if o], HEAD_B, n0))
            loss = loss + 20.0 * F.mse_loss(outb, pb[ok])
        return loss

    def demo_scene_ok(self, scene) -> bool:
        return len(scene.objects) == 3 and len(D.available_kinds(scene)) == len(D.KINDS)
