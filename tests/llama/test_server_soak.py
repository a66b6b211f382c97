"""A bounded soak of the patched llama-server with pruning (scripts/soak_server.py, the same bounds): 300 requests,
4 at a time, 10 % bad inputs, on the tiny generated llava pair."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def soak(libs, tmp_path_factory):
    """One soak run, shared by the checks below (it takes minutes on 2 cores)."""
    tmp_path = tmp_path_factory.mktemp("soak")
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import soak_server
    finally:
        sys.path.remove(str(REPO / "scripts"))
    out = tmp_path / "soak.json"
    code = soak_server.main(["--requests", "300", "--concurrency", "4", "--bad-share", "0.10", "--warmup", "50",
                             "--max-rss-growth", "5", "--keep", "0.25", "--models", str(tmp_path / "models"),
                             "--log", str(tmp_path / "server.log"), "--out", str(out)])
    return code, json.loads(out.read_text()), (tmp_path / "server.log").read_text(errors="replace")


@pytest.mark.slow
def test_llama_server_survives_a_soak_with_bad_inputs(soak):
    _, summary, log = soak
    assert summary["kinds"]["good"]["n"] == 270 and sum(k["n"] for k in summary["kinds"].values()) == 300
    assert summary["checks"]["good_all_ok"], summary["failures"]
    assert summary["checks"]["server_alive"], log[-3000:]
    assert summary["checks"]["bad_all_rejected"], summary["failures"]
    for kind, k in summary["kinds"].items():  # every bad input is the client's error (patches/41: the empty URL too)
        if kind != "good":
            assert set(k["statuses"]) <= {str(s) for s in range(400, 500)}, (kind, k["statuses"])
    # every good request went through the stage (cache_prompt false: no request reuses another's picture)
    assert log.count("64 tokens -> 16 kept") >= 270


@pytest.mark.slow
def test_llama_server_memory_stays_flat_after_warm_up(soak):
    """No leak: after a warm-up whose last requests send each bad kind 4 at a time (the pictures of a request
    refused for having too many are what raises glibc's retained high-water mark), the RSS grows < 5 % over the
    250 requests after it, and it levels off (no tenth of the run raises the high-water mark by 2 % of the
    baseline). The soak
    runs the server with MALLOC_ARENA_MAX=2 (scripts/soak_server.py says why)."""
    code, summary, _ = soak
    assert summary["config"]["malloc_arena_max"] == 2 and len(summary["rss"]["samples_kb"]) == 10
    assert summary["checks"]["rss_growth_under_bound"] and summary["checks"]["rss_levels_off"], summary["rss"]
    assert code == 0
