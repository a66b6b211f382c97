"""llama.cpp's RPC backend: the text model's layers on two ggml-rpc-server processes (127.0.0.1, CPU backend), pruned
and answered as on one machine; through VisionChat(rpc_servers=...) and the chat's --rpc."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from topv_edge.errors import ChatError, OptionError
from topv_edge.options import TopVOptions
from topv_edge.session import VisionChat

from helpers.server import binary
from helpers.stage import QUESTION

REPO = Path(__file__).parents[2]
STARTUP_TIMEOUT_S = 30
FAMILY = "llava"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    # rpc-server serves one client at a time: this probe connects and leaves at once
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def rpc_servers(libs, tmp_path_factory):
    """Two rpc-servers on the CPU backend, one thread each: their endpoints, and their logs (stdout)."""
    rpc_server = binary(libs, "ggml-rpc-server")  # llama.cpp's rpc-server, built on first use
    logs = tmp_path_factory.mktemp("rpc")
    procs, endpoints, paths = [], [], []
    try:
        for k in range(2):
            port = free_port()
            paths.append(logs / f"rpc{k}.log")
            with open(paths[-1], "wb") as log:
                procs.append(subprocess.Popen([rpc_server, "-H", "127.0.0.1", "-p", str(port), "-t", "1", "-d", "CPU"],
                                              stdout=log, stderr=subprocess.STDOUT))
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while not listening(port):
                assert procs[-1].poll() is None, paths[-1].read_text(errors="replace")[-2000:]
                assert time.monotonic() < deadline, f"rpc-server on port {port} did not listen"
                time.sleep(0.2)
            endpoints.append(f"127.0.0.1:{port}")
        yield endpoints, paths
    finally:
        for p in procs:
            stop(p)


def ask(models_dir: Path, picture: Path, rpc: list[str] | None = None):
    """(kept indices, answer, next-token logits after the question) at keep 0.25, every layer offloaded."""
    with VisionChat(models_dir / f"{FAMILY}-tiny.gguf", topv=TopVOptions(keep=0.25), threads=2, max_tokens=8,
                    n_gpu_layers=99, rpc_servers=rpc) as chat:
        chat.add_user_message(QUESTION, [picture])
        logits = chat.logits()
        kept = chat.last_selection()[0]
        chat.reset()
        answer, report = chat.ask(QUESTION, [picture])
        assert report.images[0].pruned
        return kept, answer, logits, chat.devices()


def rpc_buffers(lines: list[tuple[int, str]]) -> list[str]:
    """llama.cpp's model-buffer lines of RPC devices ("RPC0[127.0.0.1:PORT] model buffer size = ...")."""
    return [text for _, text in lines if "model buffer size" in text and "RPC" in text]


@pytest.fixture(scope="module")
def local_run(models_dir, picture, libs):
    with libs.log.capture() as rec:
        result = ask(models_dir, picture)
    assert not rpc_buffers(rec.lines)
    return result


def test_the_chat_with_rpc_keeps_and_answers_as_the_local_run(models_dir, picture, libs, rpc_servers, local_run):
    """python -m topv_edge.chat --rpc A,B --ngl 99: the same answer; both servers took a client."""
    (endpoints, logs), (_, answer, _, _) = rpc_servers, local_run
    r = subprocess.run([sys.executable, "-m", "topv_edge.chat", str(models_dir / f"{FAMILY}-tiny.gguf"), str(picture),
                        "--prompt", QUESTION, "--json", "--keep", "0.25", "--threads", "2", "--max-tokens", "8",
                        "--ngl", "99", "--rpc", ",".join(endpoints)],
                       capture_output=True, text=True, timeout=180, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["answer"] == answer
    assert out["images"][0]["n_kept"] == 16
    assert out["devices"]["rpc"] == endpoints
    for log in logs:
        assert "Accepted client connection" in log.read_text(errors="replace")


def test_visionchat_on_two_rpc_servers_keeps_and_answers_as_the_local_run(models_dir, picture, libs, rpc_servers,
                                                                          local_run):
    endpoints, _ = rpc_servers
    with libs.log.capture() as rec:
        kept, answer, logits, devices = ask(models_dir, picture, endpoints)
    buffers = rpc_buffers(rec.lines)
    # the layers are split over both servers (llama.cpp names each device with its endpoint)
    assert all(any(e in b for b in buffers) for e in endpoints), buffers
    local_kept, local_answer, local_logits, _ = local_run
    assert np.array_equal(kept, local_kept)
    assert answer == local_answer
    np.testing.assert_allclose(logits, local_logits, rtol=0, atol=1e-4)
    assert devices["rpc"] == endpoints and devices["gpu"] is None  # a CPU build: the servers are not GPUs here


def test_a_chat_without_rpc_after_one_with_it_stays_on_this_machine(models_dir, picture, libs, rpc_servers,
                                                                    local_run):
    """RPC devices are registered for the whole process; llama.cpp would offload to them by default."""
    endpoints, _ = rpc_servers
    ask(models_dir, picture, endpoints)  # registers them, if the test before did not run
    assert libs.rpc_in_use
    with libs.log.capture() as rec:
        kept, answer, _, _ = ask(models_dir, picture)
    assert not rpc_buffers(rec.lines)
    assert np.array_equal(kept, local_run[0]) and answer == local_run[1]


def test_an_unreachable_rpc_server_is_a_chat_error_not_an_abort(models_dir, libs):
    port = free_port()  # nothing listens there
    with pytest.raises(ChatError, match=f"cannot reach the RPC server 127.0.0.1:{port}"):
        VisionChat(models_dir / f"{FAMILY}-tiny.gguf", rpc_servers=[f"127.0.0.1:{port}"])


@pytest.mark.parametrize("servers, message", [
    (["127.0.0.1"], "expects HOST:PORT"),
    (["127.0.0.1:0"], "port from 1 to 65535"),
    (["a:1", "a:1"], "names a server twice"),
    ("127.0.0.1:50052", "must be a list"),
])
def test_bad_rpc_server_lists_are_refused_before_loading(models_dir, servers, message):
    with pytest.raises(OptionError, match=message):
        VisionChat(models_dir / f"{FAMILY}-tiny.gguf", rpc_servers=servers)


def test_the_chat_says_which_rpc_flag_is_wrong(models_dir, picture):
    r = subprocess.run([sys.executable, "-m", "topv_edge.chat", str(models_dir / f"{FAMILY}-tiny.gguf"), str(picture),
                        "--prompt", QUESTION, "--rpc", "127.0.0.1"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 2
    assert "argument --rpc: expects HOST:PORT" in r.stderr
