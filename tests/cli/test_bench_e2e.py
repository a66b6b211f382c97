"""`scripts/bench_e2e.py` at a small size: what the README's speed table is made of, checked where CI can run it.

The realistic sizes (a 4B Qwen3-VL at 1024 to 4096 image tokens) take the better part of an hour on two cores, so
CI runs the same script on the tiny generated Qwen3-VL pair at 64 and 256 image tokens and checks what each row
reports: the tokens the picture really gave, the kept count, the KV cells (text + kept), no probe at layer 0, and
ratios to the unpruned run of the same picture. No figure of time is asserted: speed comes from the benchmark.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_bench_e2e_reports_every_phase_per_picture_size(models_dir, tmp_path, libs):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_e2e.py"), "--presets", "qwen3vl:tiny",
                        "--image-tokens", "64", "256", "--keep", "1.0", "0.25", "--layer", "0", "--repeats", "1",
                        "--warmup-runs", "0", "--threads", "2", "--models", str(models_dir), "--json", str(out),
                        "--png", str(tmp_path / "bench.png")],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert (tmp_path / "bench.png").stat().st_size > 0
    assert [(row["image_tokens"], row["keep"]) for row in rows] == [(64, 1.0), (64, 0.25), (256, 1.0), (256, 0.25)]
    for base, pruned in (rows[0:2], rows[2:4]):
        n = base["image_tokens"]
        assert base["picture"] == pruned["picture"]
        assert not base["pruned"] and base["kept_tokens"] == n
        assert pruned["pruned"] and pruned["kept_tokens"] == n // 4
        # the cache holds the text and the kept tokens: what pruning takes out is exactly the dropped tokens
        assert base["kv_cells"] - pruned["kv_cells"] == n - n // 4
        assert pruned["kv_cells_ratio"] == pruned["kv_cells"] / base["kv_cells"]
        # the default (divprune at layer 0) runs no probe; the pass ran
        assert pruned["probe_ms"] == 0 and pruned["pass_ms"] > 0
        for key in ("encode_ms", "image_prefill_ms", "ttft_ms", "peak_rss_mb"):
            assert pruned[key + "_ratio"] == pruned[key] / base[key], key
    # the printed table has a row per configuration
    assert r.stdout.count("qwen3vl-tiny") == 4, r.stdout
    # the Markdown table of docs/results.md, from the same file
    md = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_e2e.py"), "--markdown", str(out)],
                        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert md.returncode == 0, md.stderr
    table = md.stdout.strip().splitlines()
    assert len(table) == 2 + len(rows) and all(line.startswith("| ") or line.startswith("|---") for line in table)
    assert f"| {rows[3]['kept_tokens']:.0f} / 256 |" in table[5] and f"| {rows[3]['kv_cells']:.0f} |" in table[5]
