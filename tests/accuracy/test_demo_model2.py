"""The second shipped demo model (Qwen2-VL-style, topv_edge/lab/models/scenes/, docs/demo_model2.md) through the
patched llama.cpp: the files are the layout and size the card states, and unpruned it answers the held-out
test questions (topv_edge.lab.data.scenes, seed 2: never trained on), written afresh by the generator the
figures came from."""

from __future__ import annotations

from pathlib import Path

import pytest

from topv_edge.lab.data import scenes as D
from topv_edge.eval import evaluate, normalise, read_items
from topv_edge.options import TopVOptions
from topv_edge.session import VisionChat

MODEL_DIR = Path(__file__).resolve().parents[2] / "topv_edge" / "lab" / "models" / "scenes"
MODEL, MMPROJ = MODEL_DIR / "scenes-vlm.gguf", MODEL_DIR / "mmproj-scenes-vlm.gguf"
N = 200                   # the first 200 test questions (about 33 of each kind)
UNPRUNED_MIN = 0.90       # the bar, unpruned (measured on these 200: see docs/demo_model2.md)
KIND_MIN = 0.75           # no kind may be carried by the others

# the model ships in the checkout (topv_edge/lab/models/scenes/), not in the wheel: the tests run from the checkout


def test_files_are_a_small_qwen2vl_pair():
    import gguf

    text, vision = gguf.GGUFReader(str(MODEL)), gguf.GGUFReader(str(MMPROJ))
    assert text.get_field("general.architecture").contents() == "qwen2vl"
    assert list(text.get_field("qwen2vl.rope.dimension_sections").contents()) == [4, 10, 10, 0]
    assert vision.get_field("clip.projector_type").contents() == "qwen2vl_merger"
    assert vision.get_field("clip.vision.image_size").contents() == D.IMAGE_SIZE
    assert MODEL.stat().st_size + MMPROJ.stat().st_size < 25e6


@pytest.fixture(scope="module")
def chat(libs):
    with VisionChat(MODEL, MMPROJ, topv=TopVOptions(enabled=False), threads=2, max_tokens=4) as c:
        yield c


def test_unpruned_accuracy_on_held_out_test_questions(chat, tmp_path_factory):
    items = read_items(D.write_jsonl(tmp_path_factory.mktemp("scenes-test"), N, seed=2))
    res = evaluate(chat, items, TopVOptions(enabled=False))
    assert res["kept_fraction"] == 1.0 and res["kept_tokens"] == D.GRID * D.GRID
    assert res["accuracy"] >= UNPRUNED_MIN, res["per_kind"]
    assert set(res["per_kind"]) == set(D.KINDS)
    assert min(res["per_kind"].values()) >= KIND_MIN, res["per_kind"]


def test_bundled_picture_questions(chat):
    import json

    qa = json.loads((MODEL_DIR / "demo.json").read_text())
    assert {q["kind"] for q in qa} == set(D.KINDS)
    chat.set_topv(TopVOptions(enabled=False))
    right = 0
    for q in qa:
        chat.reset()
        answer, _ = chat.ask(q["question"], [MODEL_DIR / "demo.png"])
        right += normalise(answer) == q["answer"]
    assert right >= len(qa) - 1


# Measured on these 200 questions at keep 0.25 (the defaults; README, docs/pass.md):
DEFAULT_QUARTER_MEASURED = 189 / 200   # 0.945, divprune at layer 0 (the default)
UNIFORM_QUARTER_MEASURED = 115 / 200   # 0.575
MARGIN = 0.03                          # llama.cpp builds differ in float summation order; a few answers may flip


def test_the_default_at_a_quarter_of_the_tokens_scores_as_measured_above_uniform(chat, tmp_path_factory):
    """On the model whose questions ask about clutter, relations and small text, the default method keeps what
    the answers need at keep 0.25; evenly spaced tokens do not. Pinned both ways."""
    from topv_edge.options import DEFAULT_LAYER
    from topv_edge.pruning import default_method

    assert (default_method(), DEFAULT_LAYER) == ("divprune", 0)  # the figures above are theirs
    items = read_items(D.write_jsonl(tmp_path_factory.mktemp("scenes-test-q"), N, seed=2))
    default = evaluate(chat, items, TopVOptions(keep=0.25))["accuracy"]
    uniform = evaluate(chat, items, TopVOptions(keep=0.25, method="uniform"))["accuracy"]
    assert abs(default - DEFAULT_QUARTER_MEASURED) <= MARGIN
    assert abs(uniform - UNIFORM_QUARTER_MEASURED) <= MARGIN
    assert default >= uniform + (DEFAULT_QUARTER_MEASURED - UNIFORM_QUARTER_MEASURED - 2 * MARGIN)
