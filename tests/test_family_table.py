"""The README's "Supported families" table is the stage's layout table (mtmd_topv_layout_get), and the table
covers every projector type of the pinned llama.cpp with a true account of what the stage does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from topv_edge import families

README = Path(__file__).resolve().parents[1] / "README.md"
# the families issue 13 requires to prune (projector names as the mmproj spells them)
MUST_PRUNE = {"mlp", "gemma3", "gemma4v", "qwen2vl_merger", "qwen2.5vl_merger", "qwen3vl_merger", "pixtral"}


@pytest.fixture(scope="module")
def table(libs):
    return families.layouts(libs)


def test_readme_table_is_generated_from_the_code(table):
    text = README.read_text()
    assert families.BEGIN in text and families.END in text, "README lacks the generated families section"
    section = text[text.index(families.BEGIN):text.index(families.END) + len(families.END)]
    assert section == families.readme_section(table), "README out of date: python -m topv_edge.families"


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
