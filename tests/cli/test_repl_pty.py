"""The interactive chat as a user at a terminal sees it, through a pseudo-terminal: a loading line, readline
history (the up arrow, a history file under the cache directory), Ctrl-C stopping an answer and returning
to the prompt, Ctrl-C twice or Ctrl-D at the prompt leaving."""

from __future__ import annotations

import fcntl
import os
import re
import select
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
pytest.importorskip("readline")
# generous waits: the test must pass on a loaded 2-core machine (llama.cpp building beside it); nothing sleeps a
# fixed time, every step waits for what the terminal or /proc shows
LONG = 300
SHORT = 15


class Terminal:
    """A child process on a pseudo-terminal of its own (its controlling terminal: Ctrl-C sends SIGINT)."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        master, slave = os.openpty()

        def own_terminal() -> None:  # in the child: a new session whose controlling terminal is the pty
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True,
                                     preexec_fn=own_terminal)
        os.close(slave)
        self.fd = master
        self.out = ""   # everything the terminal showed
        self.closed = False  # the child closed its side (exited)
        self.seen = 0   # how far expect() has matched

    def write(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def _read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if ready:
            try:
                data = os.read(self.fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                data = b""
            self.out += data.decode("utf-8", "replace")
            self.closed = not data

    def expect(self, pattern: str, timeout: float = LONG) -> str:
        """Wait until `pattern` (a regex) appears after what was matched before; returns the text up to it."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.out[self.seen:])
            if m:
                start = self.seen
                self.seen += m.end()
                return self.out[start:self.seen]
            if time.monotonic() > deadline or self.closed:
                raise AssertionError(f"waited for {pattern!r}; the terminal shows:\n{self.out[-3000:]}")
            self._read(0.2)

    def wait(self, timeout: float = LONG) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(0.2)
        if self.proc.poll() is None:
            raise TimeoutError(f"the chat did not exit; the terminal shows:\n{self.out[-3000:]}")
        return self.proc.returncode

    def wait_until_reading(self, timeout: float = LONG) -> None:
        """Wait until the child sleeps in select() on the terminal (readline waiting for a key).

        CPython's input() loses a SIGINT that arrives after its last signal check and before readline's
        select() (the C handler only sets a flag, and select then blocks): a Ctrl-C sent in that window of
        about a millisecond after the prompt is printed takes effect at the next key instead. A person does
        not hit it; a test writing at machine speed does, so it waits for the kernel to show the child
        blocked in select/poll before sending a Ctrl-C at the prompt."""
        deadline = time.monotonic() + timeout
        wchan = Path(f"/proc/{self.proc.pid}/wchan")
        while time.monotonic() < deadline:
            try:
                where = wchan.read_text()
            except OSError:
                pytest.skip("needs /proc/PID/wchan to know when the chat waits for a key")
            if re.match(r"(poll_schedule_timeout|do_select|do_sys_poll|core_sys_select)", where):
                return
            self._read(0.02)
        raise AssertionError(f"the chat never waited for a key; the terminal shows:\n{self.out[-3000:]}")

    def ctrl_c_at_prompt(self, pattern: str) -> None:
        """Ctrl-C at the prompt, and wait for what it shows (`pattern`).

        The key is sent once the child waits in select() (wait_until_reading). Should the SIGINT still be held
        back (the window described there, wider when a loaded machine deschedules the child between its signal
        check and select()), a left arrow, which edits nothing on an empty line, wakes readline so that the held
        SIGINT is raised; it is never a second Ctrl-C, which would leave the chat."""
        self.wait_until_reading()
        self.write("\x03")
        try:
            self.expect(pattern, timeout=SHORT)
            return
        except AssertionError:
            if self.closed:
                raise
        self.write("\x1b[D")
        self.expect(pattern)

    def ctrl_c_to_leave(self) -> int:
        """The second Ctrl-C at the prompt, as ctrl_c_at_prompt; returns the exit code."""
        self.wait_until_reading()
        self.write("\x03")
        try:
            return self.wait(timeout=SHORT)
        except TimeoutError:
            self.write("\x1b[D")
            return self.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.fd)


def start_chat(libs, models_dir: Path, picture: Path, cache: Path, *flags: str) -> Terminal:
    # a cache directory of its own for the history; the llama.cpp build stays the one under test
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(cache), "TERM": "xterm",
           "TOPV_EDGE_LLAMA_DIR": str(libs.directory)}
    # qwen2vl-tiny answers this with thousands of tokens: long enough to be stopped half-way
    return Terminal([sys.executable, "-m", "topv_edge.chat", str(models_dir / "qwen2vl-tiny.gguf"), str(picture),
                     "--max-tokens", "20000", "--threads", "2", *flags], env)


def test_ctrl_c_stops_the_answer_history_and_leaving(models_dir, picture, tmp_path, libs):
    t = start_chat(libs, models_dir, picture, tmp_path)
    try:
        t.expect(r"loading qwen2vl-tiny\.gguf and mmproj-qwen2vl-tiny\.gguf\.\.\.")  # while the model loads
        t.expect(r"Ctrl-C stops an answer")
        t.expect(r"> ")
        t.write("Tell me a story\r")
        t.expect(r"Tell me a story\r\n")
        t.expect(r"encoding and prefilling an image \(144 tokens, pruning\)")
        t.expect(r"\S{20}")  # the answer is streaming
        t.write("\x03")       # Ctrl-C: stop the answer, not the chat
        t.expect(r"\(answer stopped\)")
        t.expect(r"> ")
        t.write("/stats\r")
        stats = t.expect(r"KV cells \d+/\d+\r\n")
        assert "image 1: 144 tokens -> 36 kept" in stats and "(stopped)" in stats
        t.write("\x1b[A")     # the up arrow recalls /stats (readline history)
        t.expect(r"/stats")
        t.write("\r")
        t.expect(r"\(stopped\), KV cells")
        t.write("What now?\r")  # the conversation goes on after a stopped answer
        t.expect(r"What now\?\r\n")
        t.expect(r"\S{5}")
        t.write("\x03")
        t.expect(r"\(answer stopped\)")
        t.expect(r"> ")
        t.ctrl_c_at_prompt(r"Ctrl-C again or Ctrl-D to leave")  # Ctrl-C at the prompt: a hint, a second one leaves
        t.expect(r"> ")
        assert t.ctrl_c_to_leave() == 0
    finally:
        t.close()
    history = (tmp_path / "topv-edge" / "history").read_text()
    assert "Tell me a story" in history and "/stats" in history and "What now?" in history


def test_ctrl_d_at_the_prompt_leaves(models_dir, picture, tmp_path, libs):
    t = start_chat(libs, models_dir, picture, tmp_path)
    try:
        t.expect(r"> ")
        t.write("\x04")
        assert t.wait() == 0
        assert "Traceback" not in t.out
    finally:
        t.close()
