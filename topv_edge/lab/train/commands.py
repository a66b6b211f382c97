"""What `python -m topv_edge.lab.train MODEL COMMAND` does: train, eval (PyTorch), export (the GGUF pair through
lab.synth's writer), verify (PyTorch vs llama.cpp) and llama-eval (accuracy through llama.cpp). The llama.cpp
side is the product's: topv_edge.session.VisionChat and topv_edge.eval.evaluate, TopV off."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ... import eval as product_eval
from ...options import TopVOptions
from .. import synth as S
from .gguf_io import export_weights, load_from_gguf
from .layers import VLM, random_init
from .loop import Trainer, check_config
from .recipe import EVAL_DIR, ModelDef, evaluate, greedy_answers
from .tokenizer import Tok

UNPRUNED = TopVOptions(enabled=False)


def load_model(defn: ModelDef, args: argparse.Namespace) -> tuple[Tok, VLM, str]:
    """(tokenizer, model in eval mode, where its weights came from): --random (random_init), --from-gguf (the
    pair in --out, read back) or the checkpoint --ckpt."""
    if args.random or args.from_gguf:
        tok = defn.make_tok(defn.out_dir)
        model = defn.build(tok.n_vocab)
        if args.random:
            random_init(model, args.random_seed)
            source = f"untrained, seed {args.random_seed}"
        else:
            out = Path(args.out)
            load_from_gguf(model, (out / defn.model_file, out / defn.mmproj_file), defn.unstored)
            source = f"weights of {out / defn.model_file}"
    else:
        path = Path(args.ckpt)
        st = torch.load(path, weights_only=False)
        check_config(defn, st["config"], path)
        tok = defn.make_tok(path.parent)
        model = defn.build(tok.n_vocab)
        model.load_state_dict(st["model"])
        source = f"step {st['step']}"
    model.eval()
    return tok, model, source


def cmd_train(defn: ModelDef, args: argparse.Namespace) -> int:
    Trainer(defn, args).run()
    return 0


def cmd_eval(defn: ModelDef, args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    tok, model, source = load_model(defn, args)
    ex = defn.data.generate_split(args.n, args.seed)
    t = time.time()
    acc = evaluate(defn, model, tok, ex)
    print(f"PyTorch, {source}, seed {args.seed}, n {args.n}: {defn.fmt_acc(acc)} ({time.time() - t:.0f}s)")
    print(json.dumps({k: list(v) for k, v in acc.items()}))
    return 0


def cmd_export(defn: ModelDef, args: argparse.Namespace) -> int:
    tok, model, _ = load_model(defn, args)
    text_w, vis_w = export_weights(model)
    vis_w.update(defn.extra_mmproj_weights(vis_w))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_path, mmproj_path = out / defn.model_file, out / defn.mmproj_file
    S.write_text_model(model_path.with_suffix(".tmp"), defn.text, tok.spec, text_w, args.dtype, name=defn.title)
    S.write_mmproj(mmproj_path.with_suffix(".tmp"), defn.vision, defn.text.n_embd, vis_w, args.dtype,
                   name=f"{defn.title} mmproj")
    model_path.with_suffix(".tmp").replace(model_path)
    mmproj_path.with_suffix(".tmp").replace(mmproj_path)
    files = [model_path, mmproj_path]
    if not args.random:
        picture = defn.write_demo_picture(out)
        files += [picture, picture.with_suffix(".json")]
    for p in files:
        print(f"{p} {p.stat().st_size / 1e6:.2f} MB")
    return 0


def eval_items(defn: ModelDef, args: argparse.Namespace) -> list[product_eval.Item]:
    path = Path(args.data) / "data.jsonl" if args.data else defn.data.cached_split(EVAL_DIR, args.n, args.seed)
    return product_eval.read_items(path, limit=None if args.data else args.n)


def open_chat(defn: ModelDef, args: argparse.Namespace):
    from ...session import VisionChat

    out = Path(args.out)
    return VisionChat(out / defn.model_file, out / defn.mmproj_file, topv=UNPRUNED, threads=args.threads,
                      temp=0.0, max_tokens=defn.max_new)


def first_logits(chat, items: list[product_eval.Item]) -> np.ndarray:
    """llama.cpp's next-token logits after each single-question prompt (the answer's first token)."""
    rows = []
    for it in items:
        chat.reset()
        chat.add_user_message(it.question, [it.image])
        rows.append(chat.logits())
    return np.stack(rows).astype(np.float64)


def cmd_verify(defn: ModelDef, args: argparse.Namespace) -> int:
    """Same questions through PyTorch and llama.cpp: greedy answers must agree, first-token logits be close."""
    from PIL import Image

    torch.set_num_threads(args.threads)
    tok, model, source = load_model(defn, args)
    items = eval_items(defn, args)
    imgs = [Image.open(it.image).convert("RGB") for it in items]
    pt_ans, pt_logits = greedy_answers(defn, model, tok, imgs, [it.question for it in items], return_logits=True)
    with open_chat(defn, args) as chat:
        ll_ans = product_eval.evaluate(chat, items, UNPRUNED)["predictions"]
        ll_logits = first_logits(chat, items)
    agree = 0
    for it, pa, la in zip(items, pt_ans, ll_ans):
        agree += int(pa.strip() == la.strip())
        if pa.strip() != la.strip():
            print(f"MISMATCH {it.image} {it.question!r}: torch {pa!r} llama.cpp {la!r}")
    top_agree = int((ll_logits.argmax(1) == pt_logits.argmax(1)).sum())
    diff = np.abs(ll_logits - pt_logits).max(1)
    max_diff = float(diff.max())
    worst_rel = float((diff / np.abs(pt_logits).max(1)).max())
    n = len(items)
    print(f"verify ({source}), {n} questions: {agree}/{n} greedy answers agree, {top_agree}/{n} first tokens; "
          f"first-token logits max |diff| {max_diff:.4f} (at most {100 * worst_rel:.2f} % of the question's "
          f"largest |logit|)")
    ok = agree == n and (defn.max_rel_logit_diff is None or worst_rel < defn.max_rel_logit_diff)
    return 0 if ok else 1


def cmd_llama_eval(defn: ModelDef, args: argparse.Namespace) -> int:
    items = eval_items(defn, args)
    t = time.time()
    with open_chat(defn, args) as chat:
        res = product_eval.evaluate(chat, items, UNPRUNED)
    kinds = " ".join(f"{k}={v:.3f}" for k, v in res["per_kind"].items())
    print(f"llama.cpp (unpruned), {res['n']} examples: all={res['accuracy']:.3f} {kinds} ({time.time() - t:.0f}s)")
    print(json.dumps({"all": res["accuracy"], **res["per_kind"]}))
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "export": cmd_export, "verify": cmd_verify,
            "llama-eval": cmd_llama_eval}
