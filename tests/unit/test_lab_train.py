"""The training lab (topv_edge.lab.train): each model's definition is the configuration of the pair it ships
(one definition: the export writes the shipped files' header and tensor layout), and a short training run
stays finite."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the training lab needs torch (pip install torch==2.13.0, the train extra)")

from topv_edge.lab import synth as S  # noqa: E402
from topv_edge.lab.train import MODELS, definition  # noqa: E402
from topv_edge.lab.train.__main__ import train_parser  # noqa: E402
from topv_edge.lab.train.commands import cmd_export  # noqa: E402
from topv_edge.lab.train.loop import Trainer  # noqa: E402


def header(path: Path) -> tuple[dict, list]:
    """A GGUF's metadata (general.name aside) and its tensors' names, shapes and types."""
    import gguf

    r = gguf.GGUFReader(str(path))
    meta = {k: f.contents() for k, f in r.fields.items() if k != "general.name"}
    return meta, [(t.name, tuple(t.shape), t.tensor_type) for t in r.tensors]


@pytest.mark.parametrize("name", MODELS)
def test_definition_writes_the_shipped_pair_layout(name, tmp_path, monkeypatch, libs):
    defn = definition(name)
    monkeypatch.setattr(type(defn), "out_dir", tmp_path / "work")  # the tokenizer's vocab.gguf, not build/
    args = argparse.Namespace(random=True, random_seed=0, from_gguf=False, out=str(tmp_path / "pair"), dtype="f16")
    assert cmd_export(defn, args) == 0
    for file in (defn.model_file, defn.mmproj_file):
        (meta, tensors), (ship_meta, ship_tensors) = header(tmp_path / "pair" / file), header(defn.model_dir / file)
        # the shipped demo mmproj predates the writer's mlp rule (the ViT's last block, never run, is not
        # stored): the blocks llama.cpp runs must match, and the new file must hold exactly those
        if file == defn.mmproj_file:
            blocks = S.mmproj_block_count(defn.vision)
            assert meta.pop("clip.vision.block_count") == blocks
            ship_meta.pop("clip.vision.block_count")
            ship_tensors = [t for t in ship_tensors if not t[0].startswith(f"v.blk.{blocks}.")]
            meta.pop("GGUF.tensor_count"), ship_meta.pop("GGUF.tensor_count")
        assert meta == ship_meta, f"{file}: the definition's metadata is not the shipped pair's"
        assert tensors == ship_tensors, f"{file}: the definition's tensors are not the shipped pair's"


@pytest.mark.parametrize("name", MODELS)
def test_two_training_steps_stay_finite(name, tmp_path, libs):
    defn = definition(name)
    ap = argparse.ArgumentParser()
    train_parser(ap.add_subparsers(dest="cmd"), defn)
    args = ap.parse_args(["train", "--out", str(tmp_path), "--steps", "2", "--batch", "2", "--k", "2",
                          "--vit-steps", "1", "--vit-batch", "2", "--val-n", "2", "--log-every", "1",
                          "--read-weight", "1"])
    trainer = Trainer(defn, args)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    losses = trainer.run()
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    after = trainer.model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith("blocks."))  # it did train
    assert (tmp_path / "ckpt.pt").is_file() and (tmp_path / "best.pt").is_file()
