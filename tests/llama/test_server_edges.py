"""llama-server edges we ship: the prompt cache across two adjacent images, bad media URLs, pruning in the response.

- patches/40-server-keep-first.patch: a slot that cached [image A][image B] answered every later request that shared
  the prompt up to A with HTTP 500 "Chunk not found" (server_tokens::keep_first checked the last kept token instead
  of the first removed one), and stayed stuck; with and without pruning.
- patches/41-server-empty-media-url.patch: an empty image URL (and a URL that is not base64) is the client's error:
  400, not 500.
- patches/42-server-topv-report.patch: `timings` reports the image tokens before and after pruning, and the server
  logs its `topv: pruning images ...` line at the default verbosity.
- patches/43-server-kept-cells.patch: the slot admits a prompt, and generates, by the KV cells it takes (a pruned
  image: its kept tokens), not by its unpruned tokens: 4 pictures of 64 tokens fit `-c 256` at keep 0.25, and the
  answer is the one a context large enough for the unpruned pictures gives.

A real llama-server on 127.0.0.1 with a tiny generated LLaVA pair (64 tokens per picture), one slot.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest

from helpers.server import LlamaServer

N_IMAGE = 64  # llava tiny: an 8 x 8 grid per picture


class Server(LlamaServer):
    """llama-server on the tiny llava pair, one slot."""

    def __init__(self, libs, models_dir: Path, log_path: Path, *flags: str, n_ctx: int = 2048) -> None:
        super().__init__(libs, models_dir / "llava-tiny.gguf", models_dir / "mmproj-llava-tiny.gguf", log_path,
                         "-np", "1", *flags, n_ctx=n_ctx)


@pytest.fixture(scope="module", params=["stock", "topv"])
def server(request, models_dir, libs, tmp_path_factory):
    flags = ["--topv-keep", "0.25"] if request.param == "topv" else []
    s = Server(libs, models_dir, tmp_path_factory.mktemp("server") / "server.log", *flags)
    s.pruning = request.param == "topv"
    yield s
    s.close()


def picture_uri(seed: int) -> str:
    from topv_edge.lab.synth import demo_image

    buf = io.BytesIO()
    demo_image((336, 336), seed=seed).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def image(seed: int) -> dict:
    return {"type": "image_url", "image_url": {"url": picture_uri(seed)}}


def text(t: str) -> dict:
    return {"type": "text", "text": t}


def test_a_prompt_sharing_the_first_of_two_cached_images_is_answered(server):
    """Cache [A][B], then ask with [A] and other text, then with [A][C]: each is answered (was 500 "Chunk not found"
    for both, and for every request with that prefix until a cache_prompt:false one)."""
    status, reply = server.chat([image(1), image(2), text("What differs?")])
    assert status == 200, reply
    for content in ([image(1), text("And this one?")], [image(1), image(3), text("What differs now?")],
                    [image(1), text("Once more?")]):
        status, reply = server.chat(content)
        assert status == 200, (status, reply)
        assert reply["choices"][0]["message"]["content"] is not None
        # the slot reused A from its cache: only what follows it was processed
        assert reply["timings"]["cache_n"] >= N_IMAGE, reply["timings"]
    assert "Chunk not found" not in server.log()


@pytest.mark.parametrize("url,message", [("", "the media URL is empty"), ("%%% not base64 %%%", "Invalid base64")])
def test_a_bad_image_url_is_a_client_error(server, url, message):
    status, reply = server.chat([{"type": "image_url", "image_url": {"url": url}}, text("hi")])
    assert status == 400, (status, reply)
    assert message in reply["error"]["message"]
    status, reply = server.chat("still there?")  # the server is up and the slot free
    assert status == 200, reply


def test_timings_report_the_image_tokens_before_and_after_pruning(server):
    status, reply = server.chat([image(7), text("Describe it.")], cache_prompt=False)
    assert status == 200, reply
    t = reply["timings"]
    kept = N_IMAGE // 4 if server.pruning else N_IMAGE
    assert (t["image_tokens"], t["image_tokens_kept"]) == (N_IMAGE, kept), t
    # prompt_n and usage count the prompt's positions (an image's tokens whole): see docs/patch.md
    assert t["prompt_n"] >= N_IMAGE and reply["usage"]["prompt_tokens"] == t["prompt_n"] + t["cache_n"]
    # a text-only request reports no image tokens
    status, reply = server.chat("no picture here", cache_prompt=False)
    assert status == 200 and "image_tokens" not in reply["timings"], reply["timings"]


def test_the_pruning_line_is_logged_at_the_default_verbosity(server):
    lines = [line for line in server.log().splitlines() if "topv: pruning images to" in line]
    if server.pruning:
        assert len(lines) == 1 and "0.25 of their tokens at layer 0 (divprune)" in lines[0], lines
    else:
        assert lines == []


def four_pictures() -> list[dict]:
    return [image(11), image(12), image(13), image(14), text("Which is brightest?")]


@pytest.fixture(scope="module")
def small_context_server(models_dir, libs, tmp_path_factory, server):
    """A second server of the same kind with a context too small for the four unpruned pictures (4 x 64 tokens)."""
    flags = ["--topv-keep", "0.25"] if server.pruning else []
    s = Server(libs, models_dir, tmp_path_factory.mktemp("server-small") / "server.log", *flags, n_ctx=SMALL_CTX)
    yield s
    s.close()


SMALL_CTX = 256  # < 4 x 64 image tokens + the text; > 4 x 16 kept + the text


def test_a_prompt_is_admitted_by_the_cells_it_takes(server, small_context_server):
    status, reply = small_context_server.chat(four_pictures(), cache_prompt=False)
    if not server.pruning:  # stock: the unpruned pictures do not fit, and the error says so, as upstream words it
        assert status == 400, (status, reply)
        assert f"exceeds the available context size ({SMALL_CTX} tokens)" in reply["error"]["message"], reply
        assert "KV cells" not in reply["error"]["message"]
        return
    assert status == 200, (status, reply)
    t = reply["timings"]
    assert (t["image_tokens"], t["image_tokens_kept"]) == (4 * N_IMAGE, 4 * N_IMAGE // 4), t
    assert t["prompt_n"] > SMALL_CTX  # the prompt's tokens (positions) are more than the context holds
    # the same answer as a context with room for the unpruned pictures
    status, large = server.chat(four_pictures(), cache_prompt=False)
    assert status == 200, large
    assert reply["choices"][0]["message"]["content"] == large["choices"][0]["message"]["content"]


def test_generation_runs_until_the_cells_fill_the_context(server, small_context_server):
    """A pruned prompt generates as a text prompt of as many tokens as it takes cells would: to the context's end."""
    def generate(content) -> dict:
        status, reply = small_context_server.chat(content, cache_prompt=False, max_tokens=SMALL_CTX, ignore_eos=True)
        assert status == 200, (status, reply)
        assert reply["choices"][0]["finish_reason"] == "length", reply["choices"][0]  # not an error
        return reply

    # upstream's rule for text: n_ctx - prompt tokens (the last token is sampled, not decoded)
    reply = generate("Count the shapes, then count them again.")
    assert reply["usage"]["completion_tokens"] == SMALL_CTX - reply["timings"]["prompt_n"], reply["usage"]
    if not server.pruning:
        return  # the four unpruned pictures are refused (test above)
    reply = generate(four_pictures())
    t = reply["timings"]
    cells = t["prompt_n"] - (t["image_tokens"] - t["image_tokens_kept"])  # text + kept
    # counting the unpruned tokens would have stopped it before its first token
    assert reply["usage"]["completion_tokens"] == SMALL_CTX - cells, (reply["usage"], cells)


def test_a_prompt_whose_kept_cells_do_not_fit_names_them(small_context_server, server):
    if not server.pruning:
        pytest.skip("without pruning the upstream message holds (test above)")
    content = [image(20 + i) for i in range(16)] + [text("And now?")]  # 16 x 16 kept + the text > 256
    status, reply = small_context_server.chat(content, cache_prompt=False)
    assert status == 400, (status, reply)
    message = reply["error"]["message"]
    assert "KV cells after pruning its images" in message and f"({SMALL_CTX} tokens)" in message, message
    status, reply = small_context_server.chat("still there?")
    assert status == 200, reply
