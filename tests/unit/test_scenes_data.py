"""The second demo model's task (topv_edge.lab.data.scenes): reproducible splits, answers that follow the
scene, clutter that never lands on an object, labels the training losses rely on."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest

from topv_edge.lab.data import scenes as D


def _pixels(img) -> np.ndarray:
    return np.asarray(img)


def test_same_seed_same_example_other_seed_other_example():
    a, b, c = D.generate_split(4, 7), D.generate_split(4, 7), D.generate_split(4, 8)
    for x, y in zip(a, b):
        assert x[1:] == y[1:] and np.array_equal(_pixels(x.image), _pixels(y.image))
    assert any(not np.array_equal(_pixels(x.image), _pixels(z.image)) for x, z in zip(a, c))
    # example i depends on (seed, i) only
    assert D.generate_split(6, 7)[3][1:] == a[3][1:]


def test_splits_are_balanced_and_well_formed():
    ex = D.generate_split(300, 1)
    kinds = collections.Counter(e.qtype for e in ex)
    assert set(kinds) == set(D.KINDS) and min(kinds.values()) >= 30
    for e in ex:
        assert e.image.size == (D.IMAGE_SIZE, D.IMAGE_SIZE) and e.image.mode == "RGB"
        assert e.answer in D.ANSWERS and e.question.endswith("?")
    for kind in ("left", "above"):  # yes / no about as often: a blind guess stays at chance
        yes = sum(e.answer == "yes" for e in ex if e.qtype == kind)
        n = kinds[kind]
        assert 0.3 * n <= yes <= 0.7 * n


def test_validation_and_test_splits_differ():
    val, test = D.generate_split(20, 1), D.generate_split(20, 2)
    assert all(not np.array_equal(_pixels(a.image), _pixels(b.image)) for a, b in zip(val, test))


def test_answers_follow_the_scene():
    rng = np.random.default_rng(11)
    sizes = collections.Counter()
    for _ in range(150):
        scene = D.make_scene(rng)
        objs = scene.objects
        assert 1 <= len(objs) <= D.MAX_OBJECTS
        assert len({o.color for o in objs}) == len({o.shape for o in objs}) == len(objs)
        taken = np.zeros((D.GRID, D.GRID), int)
        for o in objs:
            assert 0 <= o.gx and o.gx + o.size <= D.GRID and 0 <= o.gy and o.gy + o.size <= D.GRID
            taken[o.gy:o.gy + o.size, o.gx:o.gx + o.size] += 1
            sizes[o.size] += 1
        if scene.box:
            taken[scene.box[1], scene.box[0]] += 1
        assert taken.max() == 1  # objects and the box never overlap
        for kind in D.available_kinds(scene):
            q, a, k, named = D.ask(scene, rng, kind)
            assert k == kind
            if kind == "count":
                assert a == D.NUMBERS[len(objs) - 1]
            elif kind == "color":
                (o,) = [o for o in objs if f"the {o.shape}?" in q]
                assert a == o.color and named == (o,)
            elif kind == "shape":
                (o,) = [o for o in objs if f" {o.color} " in q]
                assert a == o.shape and named == (o,)
            elif kind == "read":
                assert a == scene.box[2]
            else:
                first, second = named
                assert q == (f"Is the {first.color} {first.shape} {'left of' if kind == 'left' else 'above'} "
                             f"the {second.color} {second.shape}?")
                d = second.cx - first.cx if kind == "left" else second.cy - first.cy
                assert abs(d) >= D.CELL and a == ("yes" if d > 0 else "no")
    assert sizes[4] > 0 and sizes[1] > 0  # a quarter of the picture down to one token


def test_unavailable_kind_is_refused():
    rng = np.random.default_rng(0)
    scene = D.make_scene(rng, n_objects=1)
    assert "left" not in D.available_kinds(scene)
    with pytest.raises(ValueError, match="left"):
        D.ask(scene, rng, "left")
    with pytest.raises(ValueError, match="unknown"):
        D.ask(scene, rng, "size")


def test_labels_mark_objects_and_box_and_clutter_stays_off_them():
    rng = np.random.default_rng(5)
    for _ in range(10):
        scene = D.make_scene(rng)
        img, mask = D.render(scene)
        lab = D.cell_labels(scene, mask)
        assert all(v.shape == (D.GRID * D.GRID,) for v in lab.values())
        for o in scene.objects:
            cells = D.object_cells(o)
            centre = (o.gy + o.size // 2) * D.GRID + o.gx + o.size // 2
            assert centre in cells and lab["color"][centre] == 1 + list(D.COLORS).index(o.color)
            assert set(np.flatnonzero(lab["shape"] == 1 + D.SHAPES.index(o.shape))) <= set(cells)
        if scene.box:
            i = scene.box[1] * D.GRID + scene.box[0]
            assert lab["char"][i] == 1 + D.CHARS.index(scene.box[2]) and (lab["char"] > 0).sum() == 1
            # the box is light with dark ink: both occur inside its cell
            cell = np.asarray(img, np.float32)[scene.box[1] * D.CELL:(scene.box[1] + 1) * D.CELL,
                                                scene.box[0] * D.CELL:(scene.box[0] + 1) * D.CELL].mean(-1)
            assert cell.max() > 200 and cell.min() < 70
        else:
            assert not lab["char"].any()
        # inside an object's drawn pixels only the object's jittered colour appears (no clutter on top)
        a = np.asarray(img, np.int32)
        for k, o in enumerate(scene.objects):
            px = a[mask == k + 1]
            assert np.abs(px - np.array(D.COLORS[o.color])).max() <= 18


def test_pictures_hold_clutter():
    # clutter: many strongly coloured pixels outside the objects and the box
    img, mask = D.render(D.make_scene(np.random.default_rng(3)))
    a = np.asarray(img, np.int32)
    sat = (a.max(-1) - a.min(-1)) > 90
    assert (sat & (mask == 0)).sum() > 50


def test_write_jsonl_and_cache(tmp_path):
    path = D.write_jsonl(tmp_path / "x", 5, 2)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == 5 and set(lines[0]) == {"image", "question", "answer", "kind"}
    rows = D.read_jsonl(path)
    assert rows[0]["question"] == D.generate_split(1, 2)[0].question
    assert D.cached_split(tmp_path, 5, 2) == D.cached_split(tmp_path, 5, 2)
