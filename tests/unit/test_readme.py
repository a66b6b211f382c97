"""The README's figures are the results files' figures, and what it links to exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def rows(name: str) -> list[dict]:
    return json.loads((ROOT / "results" / f"{name}.json").read_text())["rows"]


def row(name: str, **match) -> dict:
    (found,) = [r for r in rows(name) if all(r.get(k) == v for k, v in match.items())]
    return found


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


# (what the README says, computed from the results file)
CLAIMS = [
    (lambda: f"**{pct(row('eval_demo', method='divprune', keep=0.25)['retention'])}** of its unpruned accuracy at keep 0.25"),
    (lambda: f"and {pct(row('eval_demo', method='divprune', keep=0.11)['retention'])} at keep 0.11"),
    (lambda: f"the scenes model **{pct(row('eval_scenes', method='divprune', keep=0.25)['retention'])}**"),
    (lambda: f"{pct(row('eval_scenes', method='divprune', keep=0.11)['retention'])} (`results/eval_demo.json`"),
    (lambda: f"keep {pct(row('eval_demo', method='uniform', keep=0.25)['retention'])} and\n"
             f"  {pct(row('eval_scenes', method='uniform', keep=0.25)['retention'])}"),
    (lambda: f"takes **{row('bench_e2e_qwen3vl4b_q4', keep=0.25, layer=0)['image_prefill_ms_ratio']:.2f}** of the unpruned"),
    (lambda: f"comes at **{row('bench_e2e_qwen3vl4b_q4', keep=0.25, layer=0)['ttft_ms_ratio']:.2f}** of the unpruned wait"),
    (lambda: f"holds {row('bench_e2e_qwen3vl4b_q4', keep=0.25, layer=0)['kv_cells']} cells instead of "
             f"{row('bench_e2e_qwen3vl4b_q4', keep=1.0)['kv_cells']}"),
    (lambda: f"{row('bench_e2e_tiled', keep=1.0)['image_tokens']:.0f} tokens"),
    (lambda: f"at 4096 image tokens the image prefill takes "
             f"**{row('bench_e2e_sizes', image_tokens=4096, keep=0.25)['image_prefill_ms_ratio']:.2f}** of the unpruned"),
    (lambda: f"first token comes at **{row('bench_e2e_sizes', image_tokens=4096, keep=0.25)['ttft_ms_ratio']:.2f}** of the unpruned wait"),
    (lambda: f"holds {row('bench_e2e_sizes', image_tokens=4096, keep=0.25)['kv_cells']:.0f} cells instead of "
             f"{row('bench_e2e_sizes', image_tokens=4096, keep=1.0)['kv_cells']:.0f}, and the"),
    (lambda: f"first token at **{row('bench_e2e_tiled', keep=0.25, layer=0)['ttft_ms_ratio']:.2f}** of the wait"),
    (lambda: f"{row('bench_pass', n=576, d=4096)['cpp_all_ms']:.0f} ms for a 576-token image at d = 4096"),
    (lambda: f"{row('bench_pass', n=576, d=4096)['cpp_all_over_blas_all']:.1f}x\n  numpy's bare"),
    (lambda: f"{row('bench_pass', n=576, d=4096)['numba_over_cpp_1t']:.0f}x the Numba reference"),
]


@pytest.mark.parametrize("claim", CLAIMS, ids=range(len(CLAIMS)))
def test_a_readme_figure_is_the_results_files(claim) -> None:
    text = claim()
    assert text in README, f"the README should say {text!r} (from results/): update the README or the results"


def test_every_file_the_readme_links_to_exists() -> None:
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    local = [link for link in links if "://" not in link]
    assert local, "no links found: the pattern is wrong"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, missing


def test_every_anchor_of_the_readme_is_one_of_its_headings() -> None:
    slugs = {re.sub(r"[^a-z0-9 -]", "", h.lower()).strip().replace(" ", "-")
             for h in re.findall(r"^#+ (.+)$", README, flags=re.M)}
    anchors = re.findall(r"\]\(#([^)]+)\)", README)
    assert anchors and set(anchors) <= slugs, set(anchors) - slugs
