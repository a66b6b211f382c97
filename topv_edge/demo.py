"""The demo for `python -m topv_edge.chat --demo`: the project's trained demo model and a picture.

The model (docs/demo_model.md) is a 5M-parameter LLaVA-1.5-style pair trained by
topv_edge.lab.train (demo) on the procedural shapes of `topv_edge.lab.data.demo`; it ships inside the
package, as GGUF files llama.cpp loads like any LLaVA model. It answers, in one word, the kinds of
question in `demo_questions()` about pictures like the bundled one (168 x 168, 144 image tokens).
"""

from __future__ import annotations

from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent / "demo_model"
DEMO_MODEL = DEMO_DIR / "demo-vlm.gguf"
DEMO_MMPROJ = DEMO_DIR / "mmproj-demo-vlm.gguf"
DEMO_PICTURE = DEMO_DIR / "demo.png"
DEMO_QA = DEMO_DIR / "demo.json"  # questions about the picture and their right answers


def demo_questions() -> list[dict[str, str]]:
    """[{"question", "answer", "kind"}] about the bundled picture, one per kind of question."""
    import json

    return json.loads(DEMO_QA.read_text())


def demo_files() -> tuple[Path, Path, Path]:
    """(model, mmproj, picture) of the shipped demo model."""
    missing = [p for p in (DEMO_MODEL, DEMO_MMPROJ, DEMO_PICTURE, DEMO_QA) if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"the demo model is not installed ({', '.join(str(p) for p in missing)} missing); "
                                "reinstall topv-edge or run python -m topv_edge.lab.train demo export")
    return DEMO_MODEL, DEMO_MMPROJ, DEMO_PICTURE
