"""Runs the TopV stage on the llama.cpp build of one backend and saves what it saw (for tests/llama/test_backends.py).

One process loads one llama.cpp build (TOPV_EDGE_BACKEND or TOPV_EDGE_LLAMA_DIR chooses it), so the comparison of
backends runs this once per backend and compares the files. Per family: a question about the picture with pruning
off, at keep 1.0 and pruned (keep, layer): the next-token logits after the prompt, the KV cell positions, the
answer to a follow-up question, and for the pruned run the kept set, the probed features and the stage's stats.

    TOPV_EDGE_BACKEND=vulkan python tests/helpers/backend_runner.py --models DIR --picture P --out OUT --ngl 99
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

QUESTION = "What is in the picture?"
FOLLOW_UP = "And the colours?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, required=True, help="the generated tiny pairs (<family>-tiny.gguf)")
    ap.add_argument("--picture", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="directory for meta.json and arrays.npz")
    ap.add_argument("--families", nargs="+", default=["llava", "qwen2vl", "gemma3"])
    ap.add_argument("--ngl", default="99", help="text-model layers on the GPU (llama.cpp's -ngl)")
    ap.add_argument("--no-mmproj-offload", action="store_true", help="run the image encoder on the CPU")
    ap.add_argument("--keep", type=float, default=0.25)
    ap.add_argument("--layer", type=int, default=1)
    args = ap.parse_args()

    from topv_edge.llama import libs as llama_libs
    from topv_edge.options import TopVOptions
    from topv_edge.session import VisionChat

    libs = llama_libs.load()
    meta: dict = {"_backend": libs.backend, "_directory": str(libs.directory), "_ngl": args.ngl,
                  "_mmproj_offload": not args.no_mmproj_offload, "_gpu_devices": libs.gpu_devices()}
    arrays: dict[str, np.ndarray] = {}
    # TopV's transport pass: the probe runs at any layer (the default method at layer 0 would skip it)
    modes = {"off": TopVOptions(enabled=False), "keep1": TopVOptions(keep=1.0, layer=args.layer, method="topv"),
             "pruned": TopVOptions(keep=args.keep, layer=args.layer, method="topv")}
    for family in args.families:
        meta[family] = {}
        for mode, topv in modes.items():
            with VisionChat(args.models / f"{family}-tiny.gguf", topv=topv, threads=2, max_tokens=8,
                            n_gpu_layers=int(args.ngl), mmproj_offload=not args.no_mmproj_offload) as chat:
                images, n_text, _ = chat.add_user_message(QUESTION, [args.picture])
                (im,) = images
                st = libs.topv_stats(chat.mctx)
                key = f"{family}/{mode}"
                arrays[f"{key}/logits"] = chat.logits()
                arrays[f"{key}/kv"] = chat.kv_cell_positions()
                m = {"pruned": im.pruned, "note": im.note, "n_tokens": im.n_tokens, "n_kept": im.n_kept,
                     "n_text": n_text, "kv_cells": chat.kv_cells, "grid_w": st.grid_w, "grid_h": st.grid_h,
                     "probe_max_layer": st.probe_max_layer, "probe_ms": st.probe_ms}
                if im.pruned:
                    arrays[f"{key}/kept"] = libs.topv_kept(chat.mctx)
                    arrays[f"{key}/source"] = libs.topv_features(chat.mctx, target=False)
                    arrays[f"{key}/target"] = libs.topv_features(chat.mctx, target=True)
                m["answer"], _ = chat.ask(FOLLOW_UP)
                meta[family][mode] = m
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(args.out / "arrays.npz", **arrays)
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
