"""--json is JSON only on stdout, one document per answer; the README's demo command and handler snippet, run as
written (on the bundled demo model), answer right."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from topv_edge.demo import demo_files, demo_questions

ROOT = Path(__file__).parents[2]
README = (ROOT / "README.md").read_text()
OPTIONS = {"keep", "keep_ratio", "keep_count", "method", "layer", "overview_weight", "params"}


def chat(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "topv_edge.chat", *args], capture_output=True, text=True, input=stdin,
                          timeout=180, env={**os.environ, "PYTHONPATH": str(ROOT)})


def json_lines(stdout: str) -> list[dict]:
    """Every stdout line is one JSON document (strict: no NaN or Infinity)."""
    def strict(name: str):
        raise ValueError(f"not JSON: {name}")
    return [json.loads(line, parse_constant=strict) for line in stdout.splitlines()]


def test_one_answer_is_one_json_document_with_the_options_used(models_dir, picture, libs):
    r = chat(str(models_dir / "llava-tiny.gguf"), str(picture), "-p", "What is in the picture?", "-n", "4", "-t", "2",
             "--json", "--method", "topv", "--layer", "1", "--topv", "alpha=0.5", "--overview-weight", "2")
    assert r.returncode == 0, r.stderr
    (doc,) = json_lines(r.stdout)
    assert list(doc)[0] == "answer" and OPTIONS <= set(doc)
    assert (doc["method"], doc["layer"], doc["keep"], doc["overview_weight"]) == ("topv", 1, "25%", 2.0)
    assert doc["params"]["alpha"] == 0.5 and doc["params"]["iters"] > 0  # every pass parameter, as used
    assert doc["prefill_ms"] == round(doc["prefill_ms"], 1) and doc["images"][0]["kept_fraction"] == 0.25


def test_repl_json_two_questions_two_lines_and_nothing_else(models_dir, picture, libs):
    script = "/help\n/stats\nWhat is in the picture?\n/stats\nAnd now?\n/nonsense\n/quit\n"
    r = chat(str(models_dir / "llava-tiny.gguf"), str(picture), "-n", "3", "-t", "2", "--json", stdin=script)
    assert r.returncode == 0, r.stderr
    first, second = json_lines(r.stdout)
    assert len(first["images"]) == 1 and second["images"] == [] and second["kv_cells"] > first["kv_cells"]
    assert first["overview_weight"] == "inf" and OPTIONS <= set(second)
    # the commands' answers are for a person: on stderr
    assert "no turn yet" in r.stderr and "KV cells" in r.stderr and "/reset" in r.stderr
    assert "unknown command /nonsense; /help lists them" in r.stderr


def test_help_lists_the_commands_and_stats_says_what_was_not_measured(models_dir, picture, libs):
    r = chat(str(models_dir / "llava-tiny.gguf"), str(picture), "-n", "2", "-t", "2",
             stdin="/help\nWhat is in the picture?\n/stats\n", )
    assert r.returncode == 0, r.stderr
    for command in ("/image PATH", "/stats", "/reset", "/help", "/quit"):
        assert command in r.stdout
    # divprune at layer 0 reads the embeddings: no probe; its pass is named, not called TopV
    assert "probe 0 ms" in r.stdout and "divprune pass" in r.stdout and "TopV" not in r.stdout
    assert "nan" not in r.stdout


def test_the_readme_demo_command_answers_right_and_its_json_parses_whole():
    (command,) = re.findall(r'python -m topv_edge\.chat --demo --prompt "[^"]+"', README)[:1]
    r = chat(*shlex.split(command)[3:])
    assert r.returncode == 0, r.stderr
    assert r.stdout == "three\n"
    r = chat(*shlex.split(command)[3:], "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["answer"] == "three"  # stdout as a whole is one JSON document


def test_the_readme_handler_snippet_answers_right_on_the_demo(libs):
    (snippet,) = [b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "TopVChatHandler" in b]
    model, mmproj, picture = demo_files()
    question = next(q for q in demo_questions() if q["kind"] == "count")
    code = (snippet.replace('"mmproj.gguf"', repr(str(mmproj))).replace('"model.gguf"', repr(str(model)))
            .replace('"photo.jpg"', repr(str(picture))).replace('"What is in the picture?"', repr(question["question"]))
            .replace("llm.create_chat_completion(", "out = llm.create_chat_completion("))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    try:
        assert scope["out"]["choices"][0]["message"]["content"].strip() == question["answer"]
        assert scope["handler"].last_image_report().pruned
    finally:
        scope["llm"].close()
