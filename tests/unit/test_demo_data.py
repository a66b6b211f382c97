"""The demo model's procedural data set: reproducible, well-posed questions, the JSONL layout."""

from __future__ import annotations

import json

import numpy as np
import pytest

from topv_edge.lab.data import demo as D


def test_same_seed_same_example_other_seed_other_example():
    a, b, c = D.generate_split(3, 7), D.generate_split(3, 7), D.generate_split(3, 8)
    for x, y in zip(a, b):
        assert x[1:] == y[1:] and np.array_equal(np.asarray(x.image), np.asarray(y.image))
    assert any(not np.array_equal(np.asarray(x.image), np.asarray(z.image)) for x, z in zip(a, c))
    # example i depends on (seed, i) only, not on how many are drawn
    assert D.generate_split(5, 7)[2][1:] == D.generate_split(3, 7)[2][1:]


def test_pictures_and_answers():
    for ex in D.generate_split(60, 3):
        assert ex.image.size == (D.IMAGE_SIZE, D.IMAGE_SIZE) and ex.image.mode == "RGB"
        assert ex.answer in D.ANSWERS and ex.qtype in D.QTYPES
        assert ex.question.endswith("?")
    img, q, a = D.make_example(np.random.default_rng(0))
    assert img.size == (168, 168) and isinstance(q, str) and a in D.ANSWERS


def test_answers_follow_the_scene():
    rng = np.random.default_rng(11)
    for _ in range(80):
        scene = D.make_scene(rng)
        objs = scene.objects
        assert 1 <= len(objs) <= D.MAX_SHAPES
        assert len({(o.color, o.shape) for o in objs}) == len(objs)
        for o in objs:  # inside the picture, never overlapping
            assert o.r <= o.cx <= D.IMAGE_SIZE - o.r and o.r <= o.cy <= D.IMAGE_SIZE - o.r
        for t in D.available_qtypes(scene):
            q, a, qt = D.ask(scene, rng, t)
            assert qt == t
            if t == "count":
                assert a == D.NUMBERS[len(objs) - 1]
            elif t == "color":
                (o,) = [o for o in objs if o.shape in q]
                assert a == o.color
            elif t == "shape":
                (o,) = [o for o in objs if f" {o.color} " in q]
                assert a == o.shape
            elif t == "exists":
                present = any(f"a {o.color} {o.shape}?" in q for o in objs)
                assert a == ("yes" if present else "no")
            else:
                (o,) = [o for o in objs if f"the {o.color} {o.shape} " in q]
                c = o.cx if t == "lr" else o.cy
                assert abs(c - D.IMAGE_SIZE / 2) >= D.POS_MARGIN
                assert a == (("left", "right") if t == "lr" else ("top", "bottom"))[c >= D.IMAGE_SIZE / 2]


def test_patch_labels_mark_the_shapes():
    rng = np.random.default_rng(5)
    scene = D.make_scene(rng, n_objects=3)
    img, mask = D.render(scene)
    colors, shapes = D.patch_labels(scene, mask)
    assert colors.shape == shapes.shape == (D.GRID * D.GRID,)
    assert ((colors > 0) == (shapes > 0)).all()
    for o in scene.objects:  # the patch under each centre carries the object's classes
        i = int(o.cy) // D.PATCH_SIZE * D.GRID + int(o.cx) // D.PATCH_SIZE
        if o.shape != "triangle":  # a triangle's centre of box can sit near its edge
            assert colors[i] == 1 + list(D.COLORS).index(o.color)
            assert shapes[i] == 1 + list(D.SHAPES).index(o.shape)


def test_write_jsonl(tmp_path):
    path = D.write_jsonl(tmp_path, 4, 2)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == 4 and set(lines[0]) == {"image", "question", "answer", "kind"}
    assert (tmp_path / lines[0]["image"]).is_file()
    rows = D.read_jsonl(path)
    ref = D.generate_split(4, 2)
    assert [r["question"] for r in rows] == [e.question for e in ref]
    from PIL import Image
    assert np.array_equal(np.asarray(Image.open(rows[1]["image"])), np.asarray(ref[1].image))


@pytest.mark.parametrize("pred,ok", [("red", True), (" Red.", True), ("red red", False), ("", False)])
def test_scoring(pred, ok):
    acc = D.accuracy_by_type([("color", "red", pred)])
    assert acc["all"] == (int(ok), 1) and acc["color"] == (int(ok), 1)
