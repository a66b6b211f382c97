"""llama.cpp's flag names in the chat (and eval/viz): aliases, sampling filters, the system prompt, a custom chat
template, flash attention, and -hf against a local stand-in of the Hugging Face Hub (never the internet)."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from topv_edge.chat import parse_args
from topv_edge.hub import choose_mmproj, choose_model, model_parts, split_repo

ROOT = Path(__file__).parents[2]
QUESTION = "What is in the picture?"


def chat(*args: str, env: dict | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "topv_edge.chat", *args], capture_output=True, text=True, input=stdin,
                          timeout=180, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def answers(r: subprocess.CompletedProcess) -> list[dict]:
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


# -- parsing: llama.cpp's single-dash names are whole flags, not a letter and a value ------------------------


def test_single_dash_names_parse_as_llama_cpp_users_type_them():
    a = parse_args(["-ngl", "99", "-c", "512", "-t", "2", "-n", "4", "-fa", "off", "-sys", "Be brief.",
                    "-m", "m.gguf", "--image", "a.png", "--image", "b.png", "c.png", "--top-k", "5", "--top-p", "0.5",
                    "--min-p", "0.1"])
    assert (a.ngl, a.ctx, a.threads, a.max_tokens, a.flash_attn, a.system_prompt) == (99, 512, 2, 4, "off", "Be brief.")
    assert (a.model_flag, a.image_flags, a.model, a.top_k, a.top_p, a.min_p) == ("m.gguf", ["a.png", "b.png"],
                                                                                  "c.png", 5, 0.5, 0.1)
    long = parse_args(["--n-gpu-layers", "7", "--ctx-size", "300", "--n-predict", "3", "--flash-attn", "on"])
    assert (long.ngl, long.ctx, long.max_tokens, long.flash_attn) == (7, 300, 3, "on")
    assert parse_args(["--gpu-layers", "1", "--predict", "2"]).ngl == 1
    hf = parse_args(["-hf", "user/repo:Q8_0", "-hff", "x.gguf", "-hft", "tok", "photo.png"])
    assert (hf.hf_repo, hf.hf_file, hf.hf_token, hf.model) == ("user/repo:Q8_0", "x.gguf", "tok", "photo.png")


def test_h_is_help_and_hf_is_not_h():
    r = chat("-h")
    assert r.returncode == 0 and "usage:" in r.stdout and "-hf USER/MODEL[:QUANT]" in r.stdout
    r = chat("-hf")  # -hf without its value: -hf's error, not the help
    assert r.returncode == 2 and "argument -hf/-hfr/--hf-repo: expected one argument" in r.stderr
    r = chat("-fa", "sometimes", "--demo")
    assert r.returncode == 2 and "-fa/--flash-attn: must be on, off or auto" in r.stderr


def test_eval_and_viz_take_the_names_too():
    for module in ("topv_edge.eval", "topv_edge.viz"):
        r = subprocess.run([sys.executable, "-m", module, "-h"], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert r.returncode == 0 and "-ngl NGL" in r.stdout and "-t THREADS" in r.stdout and "-fa on|off|auto" in r.stdout
    r = subprocess.run([sys.executable, "-m", "topv_edge.eval", "-h"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "-m MODEL, --model MODEL" in r.stdout and "-n MAX_TOKENS" in r.stdout


# -- the flags do what llama.cpp's do ------------------------------------------------------------------------


def test_llama_cpp_names_run_the_same_chat_as_the_long_flags(models_dir, picture, libs):
    model = str(models_dir / "llava-tiny.gguf")
    (short,) = answers(chat("-m", model, "--image", str(picture), "-ngl", "0", "-c", "512", "-t", "2", "-n", "3",
                            "-p", QUESTION, "--json"))
    (long,) = answers(chat(model, str(picture), "--ngl", "0", "--ctx", "512", "--threads", "2", "--max-tokens", "3",
                           "-p", QUESTION, "--json"))
    assert short["answer"] == long["answer"] and short["n_ctx"] == long["n_ctx"] == 512
    assert short["generated_tokens"] <= 3 and short["images"][0]["pruned"]


def test_top_k_top_p_min_p_are_the_sampling_filters(models_dir, picture, libs):
    model = [str(models_dir / "llava-tiny.gguf"), str(picture), "-p", QUESTION, "-n", "8", "-t", "2", "--json"]
    (greedy,) = answers(chat(*model))
    # top-k 1 leaves one candidate: any temperature and seed answers greedily
    for seed in ("1", "2"):
        (one,) = answers(chat(*model, "--temp", "3", "--top-k", "1", "--seed", seed))
        assert one["answer"] == greedy["answer"]
    # every filter off at a high temperature: the random model's answers wander off the greedy one
    free = [answers(chat(*model, "--temp", "5", "--top-k", "0", "--top-p", "1", "--min-p", "0", "--seed", s))[0]["answer"]
            for s in ("1", "2")]
    assert any(a != greedy["answer"] for a in free), free
    r = chat(*model, "--top-p", "1.5")
    assert r.returncode == 2 and "--top-p: must be in (0, 1]" in r.stderr


def test_system_prompt_goes_through_the_template_and_stays_after_reset(models_dir, picture, libs):
    model = [str(models_dir / "llava-tiny.gguf"), str(picture), "-n", "2", "-t", "2", "--json"]
    (plain,) = answers(chat(*model, "-p", QUESTION))
    (with_sys,) = answers(chat(*model, "-p", QUESTION, "-sys", "You answer in one word about shapes."))
    assert with_sys["text_tokens"] > plain["text_tokens"] + 5  # the system message's words are in the prompt
    first, again = answers(chat(*model, "-sys", "You answer in one word about shapes.",
                                stdin=f"{QUESTION}\n/reset\n/image {picture}\n{QUESTION}\n"))
    assert first["text_tokens"] == again["text_tokens"] == with_sys["text_tokens"]


def test_chat_template_replaces_the_models(models_dir, picture, tmp_path, libs):
    model = [str(models_dir / "llava-tiny.gguf"), str(picture), "-p", QUESTION, "-n", "2", "-t", "2", "--json"]
    refusing = "{{ raise_exception('this template refuses') }}"
    r = chat(*model, "--chat-template", refusing)
    assert r.returncode == 2 and "chat template refused the conversation: this template refuses" in r.stderr
    # one that drops system messages: -sys then changes nothing; from a file, as a string and as llama.cpp's flag
    users_only = ("{% for m in messages %}{% if m.role == 'user' %}USER: {% for p in m.content %}{{ p.text }}"
                  "{% endfor %}{{ '\\n' }}{% endif %}{% endfor %}ASSISTANT:")
    (tmp_path / "t.jinja").write_text(users_only)
    (a,) = answers(chat(*model, "--chat-template", users_only))
    (b,) = answers(chat(*model, "--chat-template", str(tmp_path / "t.jinja"), "-sys", "A long system message here."))
    (c,) = answers(chat(*model, "--chat-template-file", str(tmp_path / "t.jinja")))
    assert a["text_tokens"] == b["text_tokens"] == c["text_tokens"]
    r = chat(*model, "--chat-template", "{% for %}")
    assert r.returncode == 2 and "the chat template given is not a valid Jinja template" in r.stderr
    r = chat(*model, "--chat-template", "chatml")
    assert r.returncode == 2 and "neither a Jinja template nor a file" in r.stderr


@pytest.mark.parametrize("fa, state", [("on", "enabled"), ("off", "disabled"), ("auto", "auto")])
def test_flash_attn_sets_llama_cpps_context_parameter(models_dir, picture, libs, fa, state):
    r = chat(str(models_dir / "llava-tiny.gguf"), str(picture), "-p", QUESTION, "-n", "2", "-t", "2", "-fa", fa, "-v")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"flash_attn            = {state}" in r.stderr


def test_a_context_beyond_the_trained_one_warns(models_dir, picture, libs):
    from topv_edge.session import VisionChat

    with VisionChat(models_dir / "llava-tiny.gguf", threads=2) as c:
        n_train = c.n_ctx_train
    assert n_train > 0
    r = chat(str(models_dir / "llava-tiny.gguf"), str(picture), "-p", QUESTION, "-n", "2", "-t", "2",
             "--ctx", str(4 * n_train))
    assert r.returncode == 0, r.stderr
    assert f"warning: --ctx {4 * n_train} is beyond the {n_train} tokens llava-tiny.gguf was trained for" in r.stderr
    assert "GiB" in r.stderr and "Traceback" not in r.stderr
    r = chat(str(models_dir / "llava-tiny.gguf"), str(picture), "-p", QUESTION, "-n", "2", "-t", "2")
    assert "trained for" not in r.stderr  # the automatic context stays within it


# -- -hf: llama.cpp's choice of files, and the download through a local Hub -----------------------------------


def test_hf_chooses_files_as_llama_cpp():
    files = ["README.md", "m-F16.gguf", "m-Q8_0.gguf", "m-q4_k_m.gguf", "mmproj-m-f16.gguf", "mmproj-m-Q8_0.gguf",
             "m-imatrix.gguf", "big/m-Q2_K-00002-of-00002.gguf", "big/m-Q2_K-00001-of-00002.gguf"]
    assert choose_model(files) == "m-q4_k_m.gguf"  # Q4_K_M first, case-insensitive
    assert choose_model(files, "q8_0") == "m-Q8_0.gguf" and choose_model(files, "F16") == "m-F16.gguf"
    assert choose_model(files, "Q2_K") == "big/m-Q2_K-00001-of-00002.gguf"  # a split model from its first part
    assert model_parts(files, "big/m-Q2_K-00001-of-00002.gguf") == ["big/m-Q2_K-00001-of-00002.gguf",
                                                                    "big/m-Q2_K-00002-of-00002.gguf"]
    assert choose_model(files, "IQ1_S") is None
    assert choose_model(["a-F16.gguf", "mmproj-a.gguf"]) == "a-F16.gguf"  # neither default: the first model
    # the mmproj closest in quantization bits, from the model's directory or above
    assert choose_mmproj(files, "m-Q8_0.gguf") == "mmproj-m-Q8_0.gguf"
    assert choose_mmproj(files, "m-F16.gguf") == "mmproj-m-f16.gguf"
    assert choose_mmproj(["sub/mmproj-a.gguf", "mmproj-b.gguf"], "a.gguf") == "mmproj-b.gguf"
    assert split_repo("user/model:Q8_0") == ("user/model", "Q8_0") and split_repo("user/model") == ("user/model", "")


class Hub(http.server.ThreadingHTTPServer):
    """What huggingface_hub asks of the Hub for list_repo_files and hf_hub_download: the tree listing, and HEAD and
    GET of /{repo}/resolve/{revision}/{file} with the ETag, X-Repo-Commit and length of the file; unknown
    repositories answer 404 with the Hub's RepoNotFound code."""

    def __init__(self, repos: dict[str, dict[str, Path]]) -> None:
        self.repos = repos
        self.requests: list[tuple[str, str]] = []
        super().__init__(("127.0.0.1", 0), HubHandler)


class HubHandler(http.server.BaseHTTPRequestHandler):
    server: Hub
    COMMIT = "0123456789abcdef0123456789abcdef01234567"

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        self.do_GET(body=False)

    def do_GET(self, body: bool = True) -> None:
        self.server.requests.append((self.command, self.path))
        for repo, files in self.server.repos.items():
            if self.path.startswith(f"/api/models/{repo}/tree/"):
                listing = [{"type": "file", "path": name, "size": p.stat().st_size, "oid": _sha(p)[:40]}
                           for name, p in files.items()]
                return self._send(json.dumps(listing).encode(), body, {"Content-Type": "application/json"})
            prefix = f"/{repo}/resolve/main/"
            if self.path.startswith(prefix) and self.path[len(prefix):] in files:
                path = files[self.path[len(prefix):]]
                return self._send(path.read_bytes(), body, {"ETag": f'"{_sha(path)}"', "X-Repo-Commit": self.COMMIT})
        self.send_response(404)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send(self, data: bytes, body: bool, headers: dict[str, str]) -> None:
        self.send_response(200)
        for k, v in {**headers, "Content-Length": str(len(data))}.items():
            self.send_header(k, v)
        self.end_headers()
        if body:
            self.wfile.write(data)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def hub(models_dir, tmp_path):
    pytest.importorskip("huggingface_hub")
    model, mmproj = models_dir / "llava-tiny.gguf", models_dir / "mmproj-llava-tiny.gguf"
    other = tmp_path / "other-F16.gguf"  # another quant's file: never fetched unless asked for
    shutil.copy(model, other)
    (tmp_path / "README.md").write_text("# tiny llava\n")
    files = {"README.md": tmp_path / "README.md", "tiny-llava-Q4_K_M.gguf": model, "tiny-llava-F16.gguf": other,
             "mmproj-tiny-llava-f16.gguf": mmproj}
    server = Hub({"lab/tiny-llava-GGUF": files})
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}", "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_TOKEN": ""}
    yield server, env
    server.shutdown()
    server.server_close()


def test_hf_downloads_the_model_and_its_mmproj_into_the_cache(hub, models_dir, picture, tmp_path, libs):
    server, env = hub
    run = ["-hf", "lab/tiny-llava-GGUF", str(picture), "-p", QUESTION, "-n", "4", "-t", "2", "--json"]
    (got,) = answers(chat(*run, env=env))
    (local,) = answers(chat(str(models_dir / "llava-tiny.gguf"), str(picture), "-p", QUESTION, "-n", "4", "-t", "2",
                            "--json"))
    assert got["answer"] == local["answer"] and got["images"][0]["pruned"]
    fetched = {path.rsplit("/", 1)[-1] for method, path in server.requests if method == "GET" and "/resolve/" in path}
    assert fetched == {"tiny-llava-Q4_K_M.gguf", "mmproj-tiny-llava-f16.gguf"}  # Q4_K_M by default, and the mmproj
    cached = {p.name for p in (tmp_path / "hf").rglob("*.gguf")}
    assert cached == {"tiny-llava-Q4_K_M.gguf", "mmproj-tiny-llava-f16.gguf"}
    # again: from the cache (a HEAD to check it is current, no second download)
    server.requests.clear()
    r = chat(*run, env=env)
    assert r.returncode == 0, r.stderr
    assert not [p for m, p in server.requests if m == "GET" and "/resolve/" in p]


def test_hf_quant_and_file_and_errors(hub, picture, tmp_path, libs):
    server, env = hub
    r = chat("-hf", "lab/tiny-llava-GGUF:f16", str(picture), "-p", QUESTION, "-n", "2", "-t", "2", env=env)
    assert r.returncode == 0, r.stderr
    assert any(p.endswith("/tiny-llava-F16.gguf") for m, p in server.requests if m == "GET")
    assert "-hf lab/tiny-llava-GGUF: tiny-llava-F16.gguf and mmproj-tiny-llava-f16.gguf" in r.stderr
    r = chat("-hf", "lab/tiny-llava-GGUF", "--hf-file", "nope.gguf", str(picture), "-p", "x", env=env)
    assert r.returncode == 2 and "--hf-file nope.gguf is not in lab/tiny-llava-GGUF" in r.stderr
    r = chat("-hf", "lab/tiny-llava-GGUF:IQ1_S", str(picture), "-p", "x", env=env)
    assert r.returncode == 2 and "has no GGUF model of quant IQ1_S" in r.stderr and "tiny-llava-F16.gguf" in r.stderr
    r = chat("-hf", "lab/missing", str(picture), "-p", "x", env=env)
    assert r.returncode == 2 and "repository not found" in r.stderr and "Traceback" not in r.stderr
    r = chat("-hf", "not-a-repo", str(picture), "-p", "x", env=env)
    assert r.returncode == 2 and "-hf expects <user>/<model>[:quant]" in r.stderr
