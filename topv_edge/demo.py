"""The demo for `python -m topv_edge.chat --demo`: a small model pair and a picture, made on first use.

Until the trained demo model ships, the model is the project's tiny random-weight LLaVA-style pair
(its answers are noise; it shows the pipeline, the pruning and the timings).
"""

from __future__ import annotations

import os
from pathlib import Path


def demo_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "topv-edge" / "demo"


def demo_files() -> tuple[Path, Path, Path]:
    """(model, mmproj, picture), generated into the cache directory on first use."""
    from .synthetic import demo_image, write_pair

    out = demo_dir()
    out.mkdir(parents=True, exist_ok=True)
    model, mmproj = write_pair("llava", "tiny", out, seed=0)
    picture = out / "demo.png"
    if not picture.exists():
        demo_image(seed=0).save(picture)
    return model, mmproj, picture
