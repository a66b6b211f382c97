"""The training loop both models run: a ViT-only warm-up, then the whole model on packed batches drawn one
step ahead, a warm-up + cosine schedule, validation every --eval-every steps (best.pt), checkpoints (ckpt.pt)
to --resume from."""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .. import synth as S
from .layers import VLM
from .recipe import VAL_SEED, ModelDef, evaluate, forward_train, make_train_batch
from .tokenizer import Tok

LOSSES = ("loss", "aux", "bind", "read")


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * p)))


def config_dict(defn: ModelDef) -> dict:
    return {"text": asdict(defn.text), "vision": asdict(defn.vision)}


def check_config(defn: ModelDef, saved: dict, path: Path) -> None:
    """A checkpoint holds the configuration it was trained with: it must be the definition's."""
    as_cfg = {"text": S.TextConfig, "vision": S.VisionConfig}
    for key, cls in as_cfg.items():
        got = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.get(key, {}).items()})
        if got != getattr(defn, key):
            raise SystemExit(f"{path}: its {key} configuration is not the {defn.name} model's:\n  {got}\n  {getattr(defn, key)}")


def prefetch(defn: ModelDef, steps: range, args: argparse.Namespace, tok: Tok):
    """make_train_batch of each step, drawn one step ahead in a forked worker (drawing and rendering the
    pictures is a quarter of a step's time)."""

    class Steps(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(steps)

        def __getitem__(self, i: int):
            return make_train_batch(defn, steps[i], args, tok)

    loader = torch.utils.data.DataLoader(Steps(), batch_size=None, num_workers=1, prefetch_factor=2,
                                         multiprocessing_context="fork")
    return iter(loader)


def vision_warmup(defn: ModelDef, model: VLM, args: argparse.Namespace) -> None:
    """Train the ViT and the per-token heads alone for a while: the language model then starts from image
    tokens that already say what they show, and the whole model converges several times faster."""
    params = [p for n, p in model.named_parameters() if n.startswith(defn.warmup_params)]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    t0 = time.time()
    for step in range(args.vit_steps):
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, (step + 1) / 25)
        pix, labels = defn.vision_batch(step, args.vit_batch)
        img = model.vision(pix)
        loss = defn.token_loss(model, img, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if (step + 1) % args.log_every == 0:
            with torch.no_grad():
                report = defn.warmup_report(model, img, labels)
            print(f"vit step {step + 1} aux {loss.item():.4f} {report} elapsed {(time.time() - t0) / 60:.1f}min",
                  flush=True)


class Trainer:
    """One training run of a model definition into args.out (ckpt.pt, best.pt, vocab.gguf)."""

    def __init__(self, defn: ModelDef, args: argparse.Namespace) -> None:
        self.defn, self.args = defn, args
        torch.set_num_threads(args.threads)
        torch.manual_seed(args.seed)
        if defn.deterministic:
            torch.use_deterministic_algorithms(True)
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.tok = defn.make_tok(self.out)
        self.model = defn.build(self.tok.n_vocab)
        self.opt = torch.optim.AdamW(defn.optimizer_groups(self.model), lr=args.lr, betas=(0.9, 0.98), eps=1e-8)
        self.step, self.best = 0, -1.0
        self.ckpt = self.out / "ckpt.pt"
        if args.resume and self.ckpt.exists():
            st = torch.load(self.ckpt, weights_only=False)
            check_config(defn, st["config"], self.ckpt)
            self.model.load_state_dict(st["model"])
            self.opt.load_state_dict(st["opt"])
            self.step, self.best = st["step"], st.get("best", -1.0)
            print(f"resumed at step {self.step} (best val {self.best:.3f})", flush=True)

    def save(self, path: Path, extra: dict | None = None) -> None:
        tmp = path.with_suffix(".tmp")
        torch.save({"model": self.model.state_dict(), "opt": self.opt.state_dict(), "step": self.step,
                    "best": self.best, "config": config_dict(self.defn), **(extra or {})}, tmp)
        tmp.replace(path)

    def run(self) -> list[float]:
        """Train to --steps (or --stop-at, or --target); the answer loss of every step."""
        defn, args, model, opt = self.defn, self.args, self.model, self.opt
        n_params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("aux"))
        print(f"config {config_dict(defn)}\nparams {n_params / 1e6:.2f} M, vocab {self.tok.n_vocab}, "
              f"threads {args.threads}", flush=True)
        if self.step == 0 and args.vit_steps:
            vision_warmup(defn, model, args)
        val = defn.data.generate_split(args.val_n, VAL_SEED)
        kind_weights = defn.parse_kind_weights(args.kind_weight)
        stop = min(args.steps, args.stop_at or args.steps)
        batches = prefetch(defn, range(self.step, stop), args, self.tok)
        t0 = tl = time.time()
        run, losses = self._fresh_run(), []
        while self.step < stop:
            for g in opt.param_groups:
                g["lr"] = lr_at(self.step, args.steps, args.lr, args.warmup)
            loss, aux, bind, read, per_kind = forward_train(defn, model, next(batches), kind_weights)
            aux_w = args.aux_weight if self.step < args.aux_steps else 0.0
            total = loss + aux_w * aux + args.bind_weight * bind + args.read_weight * read
            opt.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            self.step += 1
            losses.append(loss.item())
            for key, v in zip(LOSSES, (loss, aux, bind, read)):
                run[key] += v.item()
            run["n"] += 1
            for t, (c, n) in per_kind.items():
                r = run["kinds"].setdefault(t, [0, 0])
                r[0] += c
                r[1] += n
            if self.step % args.log_every == 0 or self.step == args.steps:
                self._log(run, t0, tl)
                run, tl = self._fresh_run(), time.time()
            if self.step % args.eval_every == 0 or self.step == args.steps:
                if self._validate(val):
                    break
            elif self.step % args.save_every == 0:
                self.save(self.ckpt)
        self.save(self.ckpt)
        print(f"done: step {self.step}, best val {self.best:.3f}, {(time.time() - t0) / 60:.1f} min", flush=True)
        return losses

    @staticmethod
    def _fresh_run() -> dict:
        return {**{k: 0.0 for k in LOSSES}, "n": 0, "kinds": {}}

    def _log(self, run: dict, t0: float, tl: float) -> None:
        tt = {t: tuple(v) for t, v in run["kinds"].items()}
        tt["all"] = (sum(v[0] for v in tt.values()), sum(v[1] for v in tt.values()))
        n = run["n"]
        print(f"step {self.step} loss {run['loss'] / n:.4f} aux {run['aux'] / n:.4f} bind {run['bind'] / n:.3f} "
              f"read {run['read'] / n:.3f} lr {self.opt.param_groups[0]['lr']:.2e} train-tf {self.defn.fmt_acc(tt)} "
              f"{(time.time() - tl) / n:.2f}s/step elapsed {(time.time() - t0) / 60:.1f}min", flush=True)

    def _validate(self, val: list) -> bool:
        """Validation accuracy (best.pt when it is the best so far); True when --target is reached."""
        te = time.time()
        acc = evaluate(self.defn, self.model, self.tok, val)
        a = acc["all"][0] / acc["all"][1]
        print(f"VAL step {self.step} {self.defn.fmt_acc(acc)} ({time.time() - te:.0f}s)", flush=True)
        if a > self.best:
            self.best = a
            self.save(self.out / "best.pt", {"val": {k: list(v) for k, v in acc.items()}})
        self.save(self.ckpt)
        worst = min(v[0] / v[1] for v in acc.values())
        target = self.args.target
        if target and a >= target and worst >= target - self.defn.target_slack:
            print(f"target {target} reached at step {self.step}", flush=True)
            return True
        return False
