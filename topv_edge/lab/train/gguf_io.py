"""The PyTorch model's weights under GGUF names, both ways: export (numpy arrays lab.synth's writer takes) and
import from a written pair (the gguf package's reader), so that a shipped pair can be checked against
llama.cpp without its training checkpoint."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

# state-dict key (a regular expression) -> GGUF name; the training-only heads (aux_*) have none
_RULES: tuple[tuple[str, str], ...] = (
    (r"tok_emb\.weight", "token_embd.weight"),
    (r"out_norm\.weight", "output_norm.weight"),
    (r"out\.weight", "output.weight"),
    (r"blocks\.(\d+)\.(attn_norm|ffn_norm)\.weight", r"blk.\1.\2.weight"),
    (r"blocks\.(\d+)\.(q|k|v)\.(weight|bias)", r"blk.\1.attn_\2.\3"),
    (r"blocks\.(\d+)\.o\.weight", r"blk.\1.attn_output.weight"),
    (r"blocks\.(\d+)\.(gate|up|down)\.weight", r"blk.\1.ffn_\2.weight"),
    (r"vision\.patch\.(weight|bias)", r"v.patch_embd.\1"),
    (r"vision\.pos", "v.position_embd.weight"),
    (r"vision\.(pre_ln|post_ln)\.(weight|bias)", r"v.\1.\2"),
    (r"vision\.mm(\d)\.(weight|bias)", r"mm.\1.\2"),
    (r"vision\.blocks\.(\d+)\.(q|k|v)\.(weight|bias)", r"v.blk.\1.attn_\2.\3"),
    (r"vision\.blocks\.(\d+)\.o\.(weight|bias)", r"v.blk.\1.attn_out.\2"),
    (r"vision\.blocks\.(\d+)\.(ln1|ln2)\.(weight|bias)", r"v.blk.\1.\2.\3"),
    (r"vision\.blocks\.(\d+)\.(up|down)\.(weight|bias)", r"v.blk.\1.ffn_\2.\3"),
)


def gguf_name(key: str) -> str | None:
    """The GGUF tensor name of a state-dict key; None for the training-only heads."""
    if key.startswith("aux_"):
        return None
    for pattern, name in _RULES:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, name, key)
    raise KeyError(f"no GGUF name for the model's {key!r}")


def export_weights(model: torch.nn.Module) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(text model, mmproj) weights under GGUF names (numpy, PyTorch layout), as lab.synth writes them."""
    text: dict[str, np.ndarray] = {}
    vision: dict[str, np.ndarray] = {}
    for key, t in model.state_dict().items():
        name = gguf_name(key)
        if name is not None:
            (vision if key.startswith("vision.") else text)[name] = t.detach().float().numpy()
    return text, vision


def read_tensors(*paths: Path) -> dict[str, np.ndarray]:
    """Every tensor of the GGUF files, float32, in numpy (PyTorch) layout."""
    import gguf

    out: dict[str, np.ndarray] = {}
    for path in paths:
        for t in gguf.GGUFReader(str(path)).tensors:
            out[t.name] = np.array(t.data, np.float32)  # a copy: the reader maps the file read-only
    return out


def load_from_gguf(model: torch.nn.Module, paths: tuple[Path, Path], unstored: tuple[str, ...] = ()) -> None:
    """Set the model's weights from a written pair. Keys missing from the files must be training-only heads or
    start with one of `unstored` (what the writer leaves out, e.g. the mlp ViT's last block, never run)."""
    tensors = read_tensors(*paths)
    state = {}
    for key, ref in model.state_dict().items():
        name = gguf_name(key)
        if name is None or name not in tensors:
            if name is not None and not key.startswith(unstored):
                raise KeyError(f"{name} (the model's {key}) is not in {paths[0].name} / {paths[1].name}")
            continue
        if tensors[name].shape != tuple(ref.shape):
            raise ValueError(f"{name}: {tensors[name].shape} in the file, {tuple(ref.shape)} in the model")
        state[key] = torch.from_numpy(tensors[name])
    model.load_state_dict(state, strict=False)
