"""python -m topv_edge.lab.train {demo,scenes} {train,eval,export,verify,llama-eval} ... (see the package)."""

from __future__ import annotations

import argparse
import sys

from . import MODELS, __doc__ as PACKAGE_DOC, definition


def train_parser(sub, defn) -> None:
    d = defn.train_defaults
    t = sub.add_parser("train")
    t.add_argument("--out", default=str(defn.out_dir))
    t.add_argument("--steps", type=int, default=d["steps"], help="length of the schedule")
    t.add_argument("--batch", type=int, default=8, help="pictures per step")
    t.add_argument("--k", type=int, default=d["k"], help="questions per picture (packed branches)")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--warmup", type=int, default=100)
    t.add_argument("--aux-weight", type=float, default=0.5)
    t.add_argument("--aux-steps", type=int, default=10 ** 9, help="use the auxiliary loss for this many steps")
    t.add_argument("--bind-weight", type=float, default=1.0, help="weight of the binding (attention) loss")
    t.add_argument("--read-weight", type=float, default=d["read_weight"],
                   help="weight of the read-out loss (what the binding heads read must tell the named object)")
    t.add_argument("--kind-weight", default="",
                   help=f"answer-loss weight per question kind, e.g. {defn.kinds[1]}=3 (others 1)")
    t.add_argument("--vit-steps", type=int, default=d["vit_steps"], help="ViT-only warm-up steps before the main phase")
    t.add_argument("--vit-batch", type=int, default=d["vit_batch"], help="pictures per warm-up step")
    t.add_argument("--val-n", type=int, default=d["val_n"])
    t.add_argument("--eval-every", type=int, default=250)
    t.add_argument("--save-every", type=int, default=50)
    t.add_argument("--log-every", type=int, default=25)
    t.add_argument("--target", type=float, default=0.0, help="stop once val accuracy reaches this (0: never)")
    t.add_argument("--seed", type=int, default=0, help="torch seed (initialisation)")
    t.add_argument("--threads", type=int, default=1, help="torch threads (1 is faster on a busy 2-core machine)")
    t.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt")
    t.add_argument("--stop-at", type=int, default=0,
                   help="stop after this step (the schedule still runs to --steps; continue with --resume)")
    defn.add_train_args(t)


def model_parser(sub, name: str, defn) -> None:
    from .recipe import TEST_SEED, VAL_SEED

    p = sub.add_parser(name)
    p.add_argument("--ckpt", default=str(defn.out_dir / "best.pt"))
    p.add_argument("--random", action="store_true", help="the untrained model (random_init) instead of --ckpt")
    p.add_argument("--random-seed", type=int, default=0)
    p.add_argument("--from-gguf", action="store_true", help="the PyTorch weights read from the pair in --out")
    p.add_argument("--threads", type=int, default=defn.eval_threads)
    p.add_argument("-o", "--out", default=str(defn.model_dir))
    p.add_argument("--n", type=int, default=600)
    p.add_argument("--seed", type=int, default=VAL_SEED if name == "eval" else TEST_SEED)
    p.add_argument("--data", help="a data.jsonl directory, e.g. from scripts/gen_eval_set.py (default: generated)")
    if name == "export":
        p.add_argument("--dtype", choices=["f32", "f16"], default="f16")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in MODELS:
        ap = argparse.ArgumentParser(prog="python -m topv_edge.lab.train", description=PACKAGE_DOC,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
        ap.add_argument("model", choices=MODELS)
        ap.parse_args(argv[:1])  # prints the usage and exits
        return 2
    from .commands import COMMANDS

    defn = definition(argv[0])
    ap = argparse.ArgumentParser(prog=f"python -m topv_edge.lab.train {defn.name}",
                                 description=sys.modules[type(defn).__module__].__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    train_parser(sub, defn)
    for name in ("eval", "export", "verify", "llama-eval"):
        model_parser(sub, name, defn)
    args = ap.parse_args(argv[1:])
    return COMMANDS[args.cmd](defn, args)


if __name__ == "__main__":
    raise SystemExit(main())
