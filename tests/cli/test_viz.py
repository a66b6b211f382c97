"""`python -m topv_edge.viz`: the kept/pruned view and the score heat map, on the real patched llama.cpp."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from topv_edge.viz import BAR_PX, TITLE_PX, as_rgb, upscale_factor

ROOT = Path(__file__).parents[2]


def viz(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "topv_edge.viz", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_viz_draws_kept_cells_a_titled_view_and_a_heat_map_with_a_colour_bar(models_dir, picture, tmp_path, libs):
    out = tmp_path / "kept.png"
    r = viz(str(models_dir / "llava-tiny.gguf"), str(picture), "-o", str(out), "--keep", "16", "--threads", "2")
    assert r.returncode == 0, r.stderr
    assert "16 of 64 tokens kept on a 8x8 grid (shown 2x larger)" in r.stdout  # 336 px -> 672 px
    with Image.open(picture) as src, Image.open(out) as kept, Image.open(tmp_path / "kept-scores.png") as heat:
        w, h = src.size
        assert kept.size == (2 * w, 2 * h + TITLE_PX)
        assert heat.size == (2 * w + BAR_PX, 2 * h + TITLE_PX)
        view = np.asarray(kept.convert("RGB"))
        title = view[:TITLE_PX]
        assert (title < 100).any() and (title == 255).mean() > 0.8  # dark text on a white band
        # kept cells keep their pixels (enlarged 2x, nearest), pruned ones are dimmed: some equal, most differ
        a = np.asarray(src.convert("RGB")).repeat(2, axis=0).repeat(2, axis=1)
        same = np.all(a == view[TITLE_PX:], axis=-1).mean()
        assert 0.05 < same < 0.5
        bar = np.asarray(heat.convert("RGB"))[TITLE_PX + 30: -30, 2 * w + 8: 2 * w + 24].astype(int)
        # the colour bar runs from yellow (high, top) to dark blue (low, bottom)
        assert bar[0, 0, 0] > 200 and bar[0, 0, 1] > 200 and bar[-1, 0, 2] > 100 and bar[-1, 0, 0] < 60


def test_sixteen_bit_pictures_are_drawn_not_white(models_dir, picture, tmp_path, libs):
    grey8 = np.asarray(Image.open(picture).convert("L"), dtype=np.uint16)
    path16 = tmp_path / "grey16.png"
    Image.fromarray(grey8 * 257).save(path16)  # the same picture at 16 bits
    with Image.open(path16) as im:
        assert im.mode.startswith("I;16")
        assert np.abs(as_rgb(im)[..., 0] - grey8).max() <= 1  # scaled, not clipped to 255
    out = tmp_path / "kept16.png"
    r = viz(str(models_dir / "llava-tiny.gguf"), str(path16), "-o", str(out), "--keep", "0.5", "--threads", "2")
    assert r.returncode == 0, r.stderr
    view = np.asarray(Image.open(out).convert("RGB"))[TITLE_PX:]
    assert (view == 255).all(axis=-1).mean() < 0.05  # the kept cells' white inner outline only


def test_small_pictures_are_enlarged():
    assert upscale_factor((168, 168)) == 4 and upscale_factor((336, 200)) == 2 and upscale_factor((1024, 768)) == 1


def test_bad_outputs_are_refused_before_the_model_runs(models_dir, picture, tmp_path, libs):
    model = str(models_dir / "llava-tiny.gguf")
    for out, message in [(tmp_path / "missing" / "kept.png", "does not exist (create it first)"),
                         (tmp_path / "kept.xyz", "unknown picture extension '.xyz'"),
                         (tmp_path / "kept", "unknown picture extension '(none)'"),
                         (tmp_path, "is a directory")]:
        r = viz(model, str(picture), "-o", str(out))
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "missing").exists()
    r = viz(model, str(picture), "-o", str(tmp_path / "k.png"), "--method", "nope")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_divprune_heat_map_is_its_pick_order_and_outlines_show_on_yellow(models_dir, tmp_path, libs):
    yellow = tmp_path / "yellow.png"
    Image.new("RGB", (336, 336), (255, 220, 0)).save(yellow)  # the colour the old yellow outline vanished on
    out = tmp_path / "kept.png"
    r = viz(str(models_dir / "llava-tiny.gguf"), str(yellow), "-o", str(out), "--keep", "16", "--method", "divprune",
            "--threads", "2")
    assert r.returncode == 0, r.stderr
    assert "pick order (first picked highest, not picked 0) in" in r.stdout
    view = np.asarray(Image.open(out).convert("RGB"))[TITLE_PX:]
    black = np.all(view == 0, axis=-1)
    white = np.all(view == 255, axis=-1)
    # a black line around the kept regions and a white one inside it, where the old outline was yellow on yellow
    assert black.sum() > 1000 and white.sum() > 1000, (black.sum(), white.sum())
    inner = np.roll(black, 1, 0) | np.roll(black, -1, 0) | np.roll(black, 1, 1) | np.roll(black, -1, 1)
    assert (white & inner).sum() > 0.8 * white.sum()  # the white line runs along the black one
