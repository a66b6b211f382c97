"""What the tests that start llama.cpp's programs share: a free loopback port, the build's binaries, a llama-server."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now (the tests' servers only ever bind the loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary(libs, name: str) -> str:
    """One of llama.cpp's programs in the build `libs` loads, built on first use (scripts/install.sh builds only
    the libraries)."""
    from topv_edge.llama.build import program

    return str(program(name, libs.directory))


class LlamaServer:
    """The patched llama-server on 127.0.0.1, up once /health answers 200 (bounded wait); close() stops it."""

    def __init__(self, libs, model: Path, mmproj: Path, log_path: Path, *flags: str, n_ctx: int = 2048) -> None:
        self.port = free_port()
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen([binary(libs, "llama-server"), "-m", str(model), "--mmproj", str(mmproj),
                                      "--host", "127.0.0.1", "--port", str(self.port), "-t", "2", "-c", str(n_ctx),
                                      *flags], stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.close()
                raise AssertionError("llama-server did not come up:\n" + self.log()[-3000:])
            time.sleep(0.3)

    def __enter__(self) -> "LlamaServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def post(self, body: dict, path: str = "/v1/chat/completions") -> tuple[int, dict]:
        """(HTTP status, JSON reply) of a POST, errors included."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def chat(self, content: list | str, **extra) -> tuple[int, dict]:
        return self.post({"messages": [{"role": "user", "content": content}], "max_tokens": 2, "temperature": 0,
                          **extra})

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self._log.close()
