"""`python -m topv_edge.eval`: the accuracy harness, on the tiny generated model.

The questions' reference answers are the unpruned model's own greedy answers, so the baseline must
score 1.0 and a configuration that keeps every token must too; pruned configurations score what they
score (a random-weight model says nothing about quality: the trained demo model does)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from topv_edge.options import TopVOptions
from topv_edge.session import VisionChat
from topv_edge.lab.synth import demo_image


def run_eval(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "topv_edge.eval", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})


def test_eval_scores_against_the_reference_answers(models_dir, tmp_path, libs):
    model = models_dir / "llava-tiny.gguf"
    lines = []
    with VisionChat(model, topv=TopVOptions(enabled=False), threads=2, max_tokens=8) as chat:
        for i in range(6):
            demo_image((112, 112), seed=i).save(tmp_path / f"{i}.png")
            question = ["What color is the circle?", "How many shapes are there?"][i % 2]
            chat.reset()
            answer, _ = chat.ask(question, [tmp_path / f"{i}.png"])
            lines.append(json.dumps({"image": f"{i}.png", "question": question, "answer": answer,
                                     "kind": ["color", "count"][i % 2]}))
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    r = run_eval("--model", str(model), "--data", str(tmp_path / "data.jsonl"), "--keep", "64", "0.25",
                 "--method", "topv,uniform", "--threads", "2", "--out", str(tmp_path / "res.json"))
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "res.json").read_text())
    rows = {(row["method"], row["keep"]): row for row in res["rows"]}
    assert rows[("none", 1.0)]["accuracy"] == 1.0 and rows[("none", 1.0)]["per_kind"] == {"color": 1.0, "count": 1.0}
    assert rows[("topv", 64)]["accuracy"] == 1.0 and rows[("uniform", 64)]["accuracy"] == 1.0
    assert rows[("topv", 0.25)]["kept_fraction"] == 0.25
    assert "retention" in r.stdout and "uniform" in r.stdout


def test_eval_rejects_bad_data_with_exit_code_2(models_dir, tmp_path, libs):
    (tmp_path / "bad.jsonl").write_text('{"question": "no image"}\n')
    for data, message in ((tmp_path / "missing.jsonl", "data file not found"), (tmp_path / "bad.jsonl", "expected")):
        r = run_eval("--model", str(models_dir / "llava-tiny.gguf"), "--data", str(data))
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    r = run_eval("--model", str(models_dir / "llava-tiny.gguf"), "--data", str(tmp_path / "bad.jsonl"), "--method", "fastv")
    assert r.returncode == 2 and "unknown method" in r.stderr


def test_eval_out_needs_an_existing_directory_and_tables_say_ratio_or_count(models_dir, tmp_path, libs):
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "red.png")
    (tmp_path / "one.jsonl").write_text('{"image": "red.png", "question": "What color?", "answer": "red"}\n')
    data = ["--model", str(models_dir / "llava-tiny.gguf"), "--data", str(tmp_path / "one.jsonl"), "--threads", "2"]
    missing = tmp_path / "nonexistent"
    r = run_eval(*data, "--out", str(missing / "r.json"))
    assert r.returncode == 2 and "does not exist (create it first)" in r.stderr and "Traceback" not in r.stderr
    assert not missing.exists()  # nothing created, checked before the evaluation runs
    r = run_eval(*data, "--out", str(tmp_path))
    assert r.returncode == 2 and "is a directory" in r.stderr
    # --keep 1 is one token, 1.0 all of them: the table and the JSON tell them apart
    r = run_eval(*data, "--keep", "1", "1.0", "25%", "--method", "uniform", "--out", str(tmp_path / "r.json"))
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [(row["keep_label"], row["keep_ratio"], row["keep_count"], row["kept_tokens"]) for row in rows] == [
        ("all", 1.0, None, 64), ("1 tok", None, 1, 1), ("100%", 1.0, None, 64), ("25%", 0.25, None, 16)]
    table = r.stdout.splitlines()
    assert "tokens" in table[0] and any("1 tok" in line for line in table) and any("100%" in line for line in table)
