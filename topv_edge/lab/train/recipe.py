"""What both trained models share: the model definition's interface (ModelDef), llama.cpp's preprocessing,
the packed training batch, the losses on the binding heads, the answer loss and greedy decoding.

Training packs several questions about one picture into one sequence as independent branches: each branch
attends to the prompt prefix and the image and to itself only, and its positions continue from the image (so
every branch sees exactly the single-question prompt). Loss on the answer tokens only.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import synth as S
from .layers import VLM
from .tokenizer import Tok, TokenizerSpec

REPO = Path(__file__).resolve().parents[3]
EVAL_DIR = REPO / "build" / "eval"   # the splits, written on first use (shared with scripts/eval_demo_model.py)
TRAIN_SEED_BASE = 1000               # batch of step t: examples from default_rng([TRAIN_SEED_BASE + t, i])
VIT_SEED_BASE = 10 ** 6              # ViT warm-up batches (also >= 1000: never an evaluation seed)
VAL_SEED, TEST_SEED = 1, 2
DEMO_PICTURE_SEED = 3                # an evaluation seed (never trained on)


@dataclass
class Branch:
    """One question packed into a training sequence: its token ids, kind, and the binding / read-out targets
    (tuples the model's losses read, each later prefixed by (picture, answer position))."""

    question: list[int]
    answer: list[int]
    kind: str
    bind: list[tuple] = field(default_factory=list)
    read: list[tuple] = field(default_factory=list)


class ModelDef:
    """One trained model: its data, its configuration (lab.synth's TextConfig / VisionConfig: what the GGUF
    says), its tokenizer, its PyTorch vision tower and positions, and its recipe (batches and auxiliary losses).
    Subclasses fill in the attributes and the methods that raise NotImplementedError."""

    name: str
    title: str                           # the GGUF's general.name
    data: ModuleType                     # the task (topv_edge.lab.data.*)
    text: S.TextConfig
    vision: S.VisionConfig
    tokenizer: TokenizerSpec
    model_dir: Path                      # where the shipped pair lives
    model_file: str
    mmproj_file: str
    max_new: int                         # answer tokens generated (the longest answer and its EOS)
    bind_layer: int = 1                  # the text layer whose heads the binding and read-out losses train
    target_slack: float = 0.05           # --target: every kind within this of it too
    max_rel_logit_diff: float | None = None  # verify fails above this (share of the largest |logit|)
    deterministic: bool = False          # torch.use_deterministic_algorithms during training
    unstored: tuple[str, ...] = ()       # state-dict keys the GGUF writer leaves out (never run)
    train_defaults: dict[str, Any] = {}
    eval_threads: int = 1

    @property
    def out_dir(self) -> Path:
        return REPO / "build" / f"{self.name}_vlm"

    @property
    def kinds(self) -> tuple[str, ...]:
        return self.data.KINDS

    @property
    def n_img(self) -> int:
        return self.data.GRID * self.data.GRID

    def make_tok(self, workdir: Path) -> Tok:
        return Tok(self.tokenizer, workdir)

    # -- the model -----------------------------------------------------------------------------

    def build(self, n_vocab: int) -> VLM:
        raise NotImplementedError

    def head_positions(self, n0: int) -> np.ndarray:
        """Positions of the prompt prefix (n0 tokens) and the image tokens: (n0 + n_img,) or (n0 + n_img, 3)."""
        raise NotImplementedError

    def text_start(self, n0: int) -> int:
        """The position of the first text token after the image."""
        raise NotImplementedError

    def text_positions(self, start: int, n: int) -> np.ndarray:
        raise NotImplementedError

    def extra_mmproj_weights(self, vision: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Tensors the mmproj needs that the model has no parameter for."""
        return {}

    # -- the recipe ----------------------------------------------------------------------------

    def add_train_args(self, p: argparse.ArgumentParser) -> None:
        """Options of this model's recipe only."""

    def optimizer_groups(self, model: VLM) -> list[dict]:
        raise NotImplementedError

    def pictures(self, step: int, args: argparse.Namespace, tok: Tok) -> tuple[list, list[dict], list[list[Branch]]]:
        """The step's pictures: (pixels, per-token labels, branches per picture), all from the step's seed."""
        raise NotImplementedError

    def vision_batch(self, step: int, n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Pictures and per-token labels of a ViT warm-up step."""
        raise NotImplementedError

    warmup_params: tuple[str, ...] = ("vision.", "aux_")

    def token_loss(self, model: VLM, img: torch.Tensor, labels: dict[str, torch.Tensor]) -> torch.Tensor:
        """The per-image-token loss of the ViT warm-up."""
        raise NotImplementedError

    def warmup_report(self, model: VLM, img: torch.Tensor, labels: dict[str, torch.Tensor]) -> str:
        raise NotImplementedError

    def aux_loss(self, model: VLM, img: torch.Tensor, labels: dict[str, torch.Tensor], h0: torch.Tensor,
                 n_prefix: int) -> torch.Tensor:
        """The training-time auxiliary loss; h0: hidden states after text layer 0."""
        return self.token_loss(model, img, labels)

    def readout_loss(self, model: VLM, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def demo_question(self, scene, rng: np.random.Generator, kind: str) -> tuple[str, str, str]:
        return tuple(self.data.ask(scene, rng, kind)[:3])  # type: ignore[return-value]

    def demo_scene_ok(self, scene) -> bool:
        """The demo picture: three objects, every question kind askable."""
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------

    def pixels(self, img) -> np.ndarray:
        """llama.cpp's preprocessing for this mmproj (the picture is already its size): (3, H, W) float32."""
        a = np.asarray(img.convert("RGB"), np.float32) / 255.0
        size = self.vision.image_size
        if a.shape[:2] != (size, size):
            raise ValueError(f"{self.name} pictures are {size} x {size}, got {a.shape[1]} x {a.shape[0]}")
        a = (a - np.array(self.vision.image_mean, np.float32)) / np.array(self.vision.image_std, np.float32)
        return np.ascontiguousarray(a.transpose(2, 0, 1))

    def parse_kind_weights(self, spec: str) -> list[float] | None:
        """--kind-weight "shape=3,exists=3" -> a weight per kind (others 1); "" -> None."""
        if not spec:
            return None
        kw = dict(x.split("=") for x in spec.split(","))
        if not set(kw) <= set(self.kinds):
            raise SystemExit(f"--kind-weight: kinds are {', '.join(self.kinds)}")
        return [float(kw.get(t, 1.0)) for t in self.kinds]

    def fmt_acc(self, acc: dict[str, tuple[int, int]]) -> str:
        keys = ["all"] + [t for t in self.kinds if t in acc]
        return " ".join(f"{k}={acc[k][0] / max(acc[k][1], 1):.3f}" for k in keys)

    def write_demo_picture(self, out: Path) -> Path:
        """demo.png (the picture `chat --demo` shows the model) and demo.json (one question of each kind with its
        answer): the first scene of seed DEMO_PICTURE_SEED that demo_scene_ok accepts."""
        for i in range(1000):
            rng = self.data.example_rng(DEMO_PICTURE_SEED, i)
            scene = self.data.make_scene(rng)
            if self.demo_scene_ok(scene):
                break
        img, _ = self.data.render(scene)
        path = out / "demo.png"
        img.save(path)
        qa = [dict(zip(("question", "answer", "kind"), self.demo_question(scene, rng, t))) for t in self.kinds]
        path.with_suffix(".json").write_text(json.dumps(qa, indent=1) + "\n")
        return path


# ----------------------------------------------------------------------------------------------------
# the packed batch


def make_train_batch(defn: ModelDef, step: int, args: argparse.Namespace, tok: Tok) -> dict:
    """The step's pictures with their questions packed as branches (see the module's docstring)."""
    pix, labels, rows = defn.pictures(step, args, tok)
    prefix = tok.prefix()
    n0 = len(prefix)
    P = n0 + defn.n_img
    q0 = defn.text_start(n0)
    batch = len(rows)
    L = P + max(sum(len(br.question) + len(br.answer) - 1 for br in brs) for brs in rows)
    head_pos = torch.from_numpy(defn.head_positions(n0))
    ids = torch.zeros(batch, L, dtype=torch.long)
    pos = torch.zeros(batch, L, *head_pos.shape[1:], dtype=torch.long)
    targets = torch.full((batch, L), -100, dtype=torch.long)
    kinds = torch.full((batch, L), -1, dtype=torch.long)     # question kind (index in defn.kinds) of each target
    mask = torch.zeros(batch, L, L, dtype=torch.bool)
    first = []           # (b, index, answer first token, kind): teacher-forced accuracy of the answer word
    bind = []            # (b, index, head, distribution over prefix + image tokens): binding_loss
    read = []            # (b, index, ...): the model's readout_loss
    for b, brs in enumerate(rows):
        ids[b, :n0] = torch.tensor(prefix)
        pos[b, :P] = head_pos
        mask[b, :P, :P] = torch.ones(P, P, dtype=torch.bool).tril()
        cur = P
        for br in brs:
            seq = br.question + br.answer[:-1]   # inputs; the last answer token (EOS) is only a target
            n = len(seq)
            ids[b, cur:cur + n] = torch.tensor(seq)
            pos[b, cur:cur + n] = torch.from_numpy(defn.text_positions(q0, n))
            targets[b, cur:cur + n] = torch.tensor([-100] * (len(br.question) - 1) + br.answer)
            kinds[b, cur:cur + n] = defn.kinds.index(br.kind)
            mask[b, cur:cur + n, :P] = True
            mask[b, cur:cur + n, cur:cur + n] = torch.ones(n, n, dtype=torch.bool).tril()
            at = cur + len(br.question) - 1       # the position that predicts the answer
            first.append((b, at, br.answer[0], br.kind))
            bind += [(b, at, *x) for x in br.bind]
            read += [(b, at, *x) for x in br.read]
            cur += n
        if cur < L:  # padding rows attend to themselves only (no NaN), never a target
            idx = torch.arange(cur, L)
            mask[b, idx, idx] = True
    lab = {key: torch.from_numpy(np.stack([x[key] for x in labels])) for key in labels[0]}
    return {"pix": torch.from_numpy(np.stack(pix)), "ids": ids, "pos": pos, "targets": targets, "kinds": kinds,
            "mask": mask[:, None], "labels": lab, "first": first, "bind": bind, "read": read, "n_prefix": n0}


# ----------------------------------------------------------------------------------------------------
# losses


def attention_at(defn: ModelDef, model: VLM, entries: list, heads: list[int], n_prefix: int):
    """Layer bind_layer's attention logits at answer positions over the prompt prefix and the image tokens, and
    the values there: entries (b, index, ...) and a head each -> ((n, n_keys) logits, (n, n_keys, hd) values)."""
    q, k, v = model.blocks[defn.bind_layer].qk
    n_keys = n_prefix + defn.n_img
    bi = torch.tensor([x[0] for x in entries])
    ti = torch.tensor([x[1] for x in entries])
    hi = torch.tensor(heads)
    logits = torch.einsum("nd,nid->ni", q[bi, hi, ti], k[bi, hi, :n_keys]) / math.sqrt(q.shape[-1])
    return logits, v[bi, hi, :n_keys]


def read_head(defn: ModelDef, model: VLM, entries: list, head: int, n_prefix: int) -> torch.Tensor:
    """What one head reads at the entries' answer positions: its attention times the values."""
    logits, v = attention_at(defn, model, entries, [head] * len(entries), n_prefix)
    return torch.einsum("ni,nid->nd", torch.softmax(logits, -1), v)


def binding_loss(defn: ModelDef, model: VLM, batch: dict) -> torch.Tensor:
    """Cross-entropy between a head's attention over the prompt prefix and the image tokens, at the position
    that predicts the answer, and where the answer is (the entries' distributions). Teaches the lookups the
    answers need. Training only; llama.cpp never sees it."""
    if not batch["bind"]:
        return torch.zeros(())
    logits, _ = attention_at(defn, model, batch["bind"], [x[2] for x in batch["bind"]], batch["n_prefix"])
    target = torch.from_numpy(np.stack([x[3] for x in batch["bind"]]))
    return -(target * torch.log_softmax(logits, -1)).sum(-1).mean()


def forward_train(defn: ModelDef, model: VLM, batch: dict, kind_weights: list[float] | None = None):
    """(answer loss, auxiliary loss, binding loss, read-out loss, teacher-forced accuracy per kind);
    kind_weights: a weight per question kind for the answer loss, None for all 1."""
    img = model.vision(batch["pix"])
    x = model.tok_emb(batch["ids"])
    n0 = batch["n_prefix"]
    x = torch.cat([x[:, :n0], img, x[:, n0 + img.shape[1]:]], 1)
    blk = model.blocks[defn.bind_layer]
    blk.keep_qk = True
    probe: list = []
    h = model.text(x, batch["pos"], batch["mask"], probe)
    bind, read = binding_loss(defn, model, batch), defn.readout_loss(model, batch)
    blk.keep_qk, blk.qk = False, None
    sel = batch["targets"] >= 0
    logits = model.out(h[sel])
    if kind_weights is None:
        loss = F.cross_entropy(logits, batch["targets"][sel])
    else:
        w = torch.tensor(kind_weights)[batch["kinds"][sel]]
        loss = (F.cross_entropy(logits, batch["targets"][sel], reduction="none") * w).sum() / w.sum()
    aux = defn.aux_loss(model, img, batch["labels"], probe[0], n0)
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


def greedy_answers(defn: ModelDef, model: VLM, tok: Tok, images, questions, batch: int = 32,
                   return_logits: bool = False):
    """Greedy decoding of single-question prompts; answers (and the first step's logits, float64)."""
    prefix = tok.prefix()
    n0 = len(prefix)
    q0 = defn.text_start(n0)
    head_pos = torch.from_numpy(defn.head_positions(n0))
    answers, first_logits = [], []
    for s in range(0, len(images), batch):
        imgs, qs = images[s:s + batch], questions[s:s + batch]
        with torch.no_grad():
            emb = model.vision(torch.from_numpy(np.stack([defn.pixels(i) for i in imgs])))
            seqs = [tok.question(q) for q in qs]
            gen: list[list[int]] = [[] for _ in qs]
            done = [False] * len(qs)
            for step in range(defn.max_new):
                texts = [q + g for q, g in zip(seqs, gen)]
                Lt = max(len(t) for t in texts)
                ids = torch.zeros(len(qs), Lt, dtype=torch.long)
                for b, t in enumerate(texts):
                    ids[b, :len(t)] = torch.tensor(t)
                x = torch.cat([model.tok_emb(torch.tensor(prefix)).expand(len(qs), -1, -1), emb, model.tok_emb(ids)], 1)
                T = x.shape[1]
                pos = torch.cat([head_pos, torch.from_numpy(defn.text_positions(q0, Lt))])
                mask = torch.ones(T, T, dtype=torch.bool).tril()
                h = model.text(x, pos.expand(len(qs), *pos.shape), mask)
                last = torch.tensor([n0 + emb.shape[1] + len(t) - 1 for t in texts])
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


def evaluate(defn: ModelDef, model: VLM, tok: Tok, examples) -> dict[str, tuple[int, int]]:
    """Greedy accuracy per kind (and "all") of examples (data.Example)."""
    model.eval()
    preds = greedy_answers(defn, model, tok, [e.image for e in examples], [e.question for e in examples])
    model.train()
    return defn.data.accuracy_by_type([(e.qtype, e.answer, p) for e, p in zip(examples, preds)])
