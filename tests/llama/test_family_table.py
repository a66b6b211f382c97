"""The README's "Supported families" table is the stage's layout table (mtmd_topv_layout_get), and the table
covers every projector type of the pinned llama.cpp with a true account of what the stage does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from topv_edge.llama import families as families

README = Path(__file__).resolve().parents[2] / "README.md"
# the families issue 13 requires to prune (projector names as the mmproj spells them)
MUST_PRUNE = {"mlp", "gemma3", "gemma4v", "qwen2vl_merger", "qwen2.5vl_merger", "qwen3vl_merger", "pixtral"}


@pytest.fixture(scope="module")
def table(libs):
    return families.layouts(libs)


def test_readme_table_is_generated_from_the_code(table):
    text = README.read_text()
    assert families.BEGIN in text and families.END in text, "README lacks the generated families section"
    section = text[text.index(families.BEGIN):text.index(families.END) + len(families.END)]
    assert section == families.readme_section(table), "README out of date: python -m topv_edge.llama.families"


def test_every_projector_type_of_llama_cpp_has_one_entry(table, libs):
    """clip-impl.h's PROJECTOR_TYPE_NAMES (the build's source tree) against the table: one entry each, no duplicates."""
    names = [r.projector for r in table]
    assert len(names) == len(set(names))
    path = libs.directory / "src" / "tools" / "mtmd" / "clip-impl.h"
    if not path.exists():
        pytest.skip(f"{path}: llama.cpp sources not at hand")
    header = path.read_text()
    block = header[header.index("PROJECTOR_TYPE_NAMES"):]
    block = block[:block.index("};")]
    known = set(re.findall(r'PROJECTOR_TYPE_\w+,\s*"([^"]+)"', block))
    known -= {"qwen2.5o"}  # Qwen2.5-Omni: loaded as qwen2.5vl_merger + qwen2a (clip.cpp), never seen by the stage
    assert known == set(names) - {"mlp_norm"}  # "mlp" with a projector norm: clip.cpp gives it no name of its own


def test_the_required_families_prune_and_every_decline_has_a_reason(table):
    by_name = {r.projector: r for r in table}
    for name in MUST_PRUNE:
        assert by_name[name].prunes, name
        assert by_name[name].layout and by_name[name].reason is None
    assert not by_name["mlp"].class_token_declined  # patches/10 is in this build: class-token towers prune
    for r in table:
        if not r.prunes:
            assert r.reason and r.reason[0].islower() and len(r.reason.split()) >= 4, r
            assert not r.layout


def test_check_model_owners_are_consistent(table):
    """A text architecture belongs with one projector family at most (mtmd_topv_check_model relies on it):
    the entries that name it all serve the same models (Gemma 4 and its unified variant; Qwen2/2.5-VL)."""
    owners: dict[str, set[str]] = {}
    for r in table:
        for arch in (r.text_archs or "").split(","):
            if arch:
                owners.setdefault(arch, set()).add(r.projector)
    assert owners["qwen35"] == owners["qwen3vl"] == {"qwen3vl_merger"}
    assert owners["gemma4"] == {"gemma4v", "gemma4uv"}
    assert owners["qwen2vl"] == {"qwen2vl_merger", "qwen2.5vl_merger"}
    assert owners["gemma3"] == {"gemma3"}


@pytest.mark.parametrize("text, mmproj, fits", [
    ("qwen35", "qwen35", True),      # Qwen3.5 takes the Qwen3-VL encoder (qwen3vl_merger, here without deepstack)
    ("qwen3vl", "qwen3vl", True),
    ("gemma4", "gemma4", True),
    ("pixtral", "pixtral", True),    # llama text: any text model no other entry owns
    ("qwen2vl", "qwen35", False),    # a qwen3vl_merger mmproj on a qwen2vl text model (Qwen2/2.5-VL mergers)
    ("llava", "gemma4", False),      # a Gemma 4 mmproj needs a gemma4 text model
    ("gemma4", "pixtral", False),    # a gemma4 text model takes a Gemma 4 mmproj, not Pixtral's
])
def test_check_model_pairs_each_projector_with_its_text_models(models_dir, libs, text, mmproj, fits):
    """mtmd_topv_check_model on real pairs of the generated families: right pairs fit, crossed ones get a reason."""
    from topv_edge.lab.synth import pair_paths

    L, M = libs.llama_cpp, libs.mtmd_cpp
    model = L.llama_model_load_from_file(str(pair_paths(text, "tiny", models_dir)[0]).encode(),
                                         L.llama_model_default_params())
    assert model
    p = M.mtmd_context_params_default()
    p.use_gpu, p.warmup, p.print_timings = False, False, False
    mctx = M.mtmd_init_from_file(str(pair_paths(mmproj, "tiny", models_dir)[1]).encode(), model, p)
    try:
        assert mctx, "llama.cpp refused the pair (embedding widths)"
        reason = libs.topv_check_model(mctx, model)
        assert (reason is None) == fits, reason
        if not fits:
            assert "belongs with" in reason or "takes a" in reason
    finally:
        if mctx:
            M.mtmd_free(mctx)
        L.llama_model_free(model)
