"""A bounded soak of the patched llama-server with pruning (scripts/soak_server.py, the same bounds): 300 requests,
4 at a time, 10 % bad inputs, on the tiny generated llava pair."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]


@pytest.mark.slow
def test_llama_server_survives_a_soak_with_bad_inputs(libs, tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import soak_server
    finally:
        sys.path.remove(str(REPO / "scripts"))
    out = tmp_path / "soak.json"
    code = soak_server.main(["--requests", "300", "--concurrency", "4", "--bad-share", "0.10", "--warmup", "50",
                             "--max-rss-growth", "5", "--keep", "0.25", "--models", str(tmp_path / "models"),
                             "--log", str(tmp_path / "server.log"), "--out", str(out)])
    summary = json.loads(out.read_text())
    log_tail = (tmp_path / "server.log").read_text(errors="replace")[-3000:]
    assert summary["kinds"]["good"]["n"] == 270 and sum(k["n"] for k in summary["kinds"].values()) == 300
    assert summary["checks"]["good_all_ok"], summary["failures"]
    assert summary["checks"]["server_alive"], log_tail
    assert summary["checks"]["bad_all_rejected"], summary["failures"]
    # the empty image URL is the one bad input allowed a 500 (a patch on another branch makes it a 400)
    for kind, k in summary["kinds"].items():
        if kind not in ("good", "empty_image_url"):
            assert set(k["statuses"]) <= {str(s) for s in range(400, 500)}, (kind, k["statuses"])
    assert summary["checks"]["rss_growth_under_bound"], summary["rss"]
    assert code == 0
    # every good request went through the stage (cache_prompt false: no request reuses another's picture)
    assert (tmp_path / "server.log").read_text(errors="replace").count("64 tokens -> 16 kept") >= 270
