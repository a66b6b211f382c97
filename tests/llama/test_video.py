"""Video through the TopV stage, on llama.cpp's own video reader (MTMD_VIDEO: ffprobe and ffmpeg give the frames).

Qwen2/2.5/3-VL and Qwen3.5 merge two consecutive frames into one chunk (their 3-D patch embedding makes one
nx x ny grid at one t). llama.cpp's reader writes a timestamp after the first frame, so the 8-frame clip here gives
5 image chunks: frame 0, frames 1-2, 3-4, 5-6, and frame 7. Per family, on its tiny pair: keep 1.0 is bit-identical
to pruning off; at keep 0.25 every chunk is pruned, its kept set is the method's choice on its own probed features,
the memory holds exactly the text and the kept tokens at their original (t, y, x), and the logits equal a decode by
hand of only the kept rows. The chat reads a video file (also one whose index comes last) and reports it as one
video of 8 frames; a file ffmpeg cannot read gets one line and the conversation goes on. llama-mtmd-cli `--video`
and llama-server's `video_url` prune every chunk through the same stage.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import topv_edge
from topv_edge.errors import ChatError
from topv_edge.lab.synth import demo_image, pair_paths
from topv_edge.options import TopVOptions
from topv_edge.session import VisionChat
from topv_edge.session.files import moov_after_mdat

from helpers.stage import QUESTION, manual_prefill, memory_cells, prefill_by_chunk, recurrent_state

FAMILIES = ("qwen2vl", "qwen25vl", "qwen3vl", "qwen35")
N_FRAMES = 8
CHUNK_FRAMES = [(0, 1), (1, 2), (3, 2), (5, 2), (7, 1)]  # (first frame, frames) of each image chunk
KEEP = 0.25
PROBED = {"keep": KEEP, "layer": 2, "method": "topv"}  # the probe's path; the default (divprune, layer 0) in the chat
ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """An 8-frame clip at 4 fps, written twice: with its index first ("faststart") and, as most encoders write
    MP4, last."""
    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        pytest.skip("video needs the ffmpeg and ffprobe programs (apt install ffmpeg; .ci/run installs them)")
    out = tmp_path_factory.mktemp("video")
    for i in range(N_FRAMES):
        demo_image((224, 224), seed=20 + i).save(out / f"frame-{i:02d}.png")
    clips = {}
    for name, flags in (("faststart", ["-movflags", "+faststart"]), ("index-last", [])):
        clips[name] = out / f"clip-{name}.mp4"
        subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-framerate", "4", "-i", str(out / "frame-%02d.png"),
                        "-c:v", "mpeg4", "-q:v", "2", *flags, str(clips[name])], check=True)
    assert not moov_after_mdat(clips["faststart"].read_bytes()) and moov_after_mdat(clips["index-last"].read_bytes())
    return clips


def session(models_dir: Path, family: str, **topv) -> VisionChat:
    model, mmproj = pair_paths(family, "tiny", models_dir)
    return VisionChat(model, mmproj, topv=TopVOptions(**topv), threads=2, max_tokens=4)


@pytest.mark.parametrize("family", FAMILIES)
def test_video_keep_all_is_bit_identical_to_pruning_off(models_dir, clips, libs, family):
    results = []
    for topv in ({"enabled": False}, {"keep": 1.0}):
        with session(models_dir, family, **topv) as chat:
            images, _, _ = chat.add_user_message(QUESTION, [clips["faststart"]])
            results.append(([(im.pruned, im.frame, im.n_frames) for im in images], chat.logits(), memory_cells(chat)))
    (r0, l0, c0), (r1, l1, c1) = results
    assert r0 == r1 == [(False, first, n) for first, n in CHUNK_FRAMES]
    assert np.array_equal(l0, l1)
    assert np.array_equal(c0, c1)


@pytest.mark.parametrize("family", FAMILIES)
def test_video_chunks_are_pruned_at_their_original_positions(models_dir, clips, libs, family):
    """Each chunk (a frame, or two merged) keeps round(0.25 x its grid), chosen by the method on its own probed
    features; the memory is the unpruned one without the dropped tokens' cells, nothing renumbered."""
    clip = clips["faststart"]
    with session(models_dir, family, enabled=False) as chat:
        chat.add_user_message(QUESTION, [clip])
        full = {tuple(c) for c in memory_cells(chat).tolist()}
    with session(models_dir, family, **PROBED) as chat:
        records, n_past = prefill_by_chunk(chat, clip)
        cells = memory_cells(chat)
    assert [(r["report"].frame, r["report"].n_frames) for r in records] == CHUNK_FRAMES
    dropped = set()
    for r in records:
        rep, st, kept = r["report"], r["stats"], r["kept"]
        assert rep.pruned, rep.note
        assert (st.grid_w * st.grid_h, st.n_always_kept) == (r["n_tokens"], 0)
        assert len(kept) == rep.n_kept == round(KEEP * r["n_tokens"])
        idx, _ = topv_edge.select(r["source"], r["target"], grid=r["grid"], keep=KEEP, method="topv")
        assert np.array_equal(kept, np.sort(idx))
        positions = r["positions"]
        assert len({p[0] for p in positions.tolist()}) == 1  # one t for the chunk's grid: its frames merged
        dropped |= {tuple(p) for p in positions[np.setdiff1d(np.arange(r["n_tokens"]), kept)].tolist()}
    assert len({r["positions"][0][0] for r in records}) == len(records)  # every chunk at a t of its own
    assert dropped <= full
    assert [tuple(c) for c in cells.tolist()] == sorted(full - dropped)


@pytest.mark.parametrize("family", FAMILIES)
def test_video_logits_equal_a_manual_decode_of_the_kept_rows(models_dir, clips, libs, family):
    clip = clips["faststart"]
    with session(models_dir, family, **PROBED) as chat:
        records, _ = prefill_by_chunk(chat, clip)
        stage = chat.logits()
        stage_state = recurrent_state(chat) if family == "qwen35" else None
    with session(models_dir, family, enabled=False) as chat:
        manual = manual_prefill(chat, clip, [r["kept"] for r in records])
        manual_state = recurrent_state(chat) if family == "qwen35" else None
    np.testing.assert_allclose(stage, manual, rtol=1e-5, atol=1e-5)
    assert stage_state == manual_state


def test_chat_reads_a_video_and_reports_it_as_one(models_dir, clips, libs):
    """The default options (divprune at layer 0), the file as most encoders write it (index last); --json reports
    the video with every chunk's frames."""
    model, mmproj = pair_paths("qwen3vl", "tiny", models_dir)
    r = subprocess.run([sys.executable, "-m", "topv_edge.chat", str(model), str(clips["index-last"]), "--mmproj",
                        str(mmproj), "-p", QUESTION, "-n", "2", "--json"], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(r.stdout)
    (video,) = doc["pictures"]
    assert video["video"] and video["frames"] == N_FRAMES
    assert [tuple(c["frames"]) for c in video["chunks"]] == CHUNK_FRAMES
    assert all(c["pruned"] and c["n_kept"] == round(KEEP * c["n_tokens"]) for c in video["chunks"])
    assert video["n_kept"] == sum(c["n_kept"] for c in video["chunks"]) < video["n_tokens"]


def test_a_video_ffmpeg_cannot_read_is_refused_and_the_chat_goes_on(models_dir, clips, libs, tmp_path):
    broken = tmp_path / "broken.mp4"
    data = clips["index-last"].read_bytes()
    broken.write_bytes(data[: len(data) // 2])  # cut in the middle of its frames: the index at the end is gone
    model, mmproj = pair_paths("qwen3vl", "tiny", models_dir)
    with VisionChat(model, mmproj, topv=TopVOptions(keep=KEEP), threads=2, max_tokens=2) as chat:
        with pytest.raises(ChatError, match="video") as e:
            chat.ask(QUESTION, [broken])
        assert "\n" not in str(e.value)
        answer, report = chat.ask(QUESTION, [clips["faststart"]])
        assert report.pictures[0].n_frames == N_FRAMES


def test_llama_mtmd_cli_prunes_every_chunk_of_a_video(models_dir, clips, libs):
    """llama-mtmd-cli `--video` goes through the same stage: its log has one `topv:` line per chunk, each pruned to
    a quarter of its tokens (the file with its index first: llama.cpp pipes a video to ffprobe)."""
    from helpers.server import binary

    model, mmproj = pair_paths("qwen3vl", "tiny", models_dir)
    env = dict(os.environ, LD_LIBRARY_PATH=str(libs.directory / "lib"))
    r = subprocess.run([binary(libs, "llama-mtmd-cli"), "-m", str(model), "--mmproj", str(mmproj), "--video",
                        str(clips["faststart"]), "-p", QUESTION, "-n", "2", "--temp", "0", "-t", "2", "--jinja",
                        "--no-warmup", "--topv-keep", str(KEEP)],
                       capture_output=True, text=True, errors="replace", env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    pruned = [(int(n), int(k)) for n, k in re.findall(r"topv: .*?(\d+) tokens -> (\d+) kept", r.stderr)]
    assert len(pruned) == len(CHUNK_FRAMES), r.stderr[-3000:]
    assert all(k == round(KEEP * n) for n, k in pruned), pruned


def test_llama_server_prunes_a_video_url_and_reports_its_kept_tokens(models_dir, clips, libs, tmp_path):
    """llama-server's `video_url` (a data URI) goes through the same stage: every chunk pruned, and `timings`
    gives the video's tokens before and after (patches/42)."""
    import base64

    from helpers.server import LlamaServer

    model, mmproj = pair_paths("qwen3vl", "tiny", models_dir)
    uri = "data:video/mp4;base64," + base64.b64encode(clips["faststart"].read_bytes()).decode()
    with LlamaServer(libs, model, mmproj, tmp_path / "server.log", "--topv-keep", str(KEEP)) as server:
        status, reply = server.chat([{"type": "video_url", "video_url": {"url": uri}},
                                     {"type": "text", "text": QUESTION}], cache_prompt=False)
        log = server.log()
    assert status == 200, reply
    pruned = [(int(n), int(k)) for n, k in re.findall(r"topv: .*?(\d+) tokens -> (\d+) kept", log)]
    assert len(pruned) == len(CHUNK_FRAMES) and all(k == round(KEEP * n) for n, k in pruned), log[-3000:]
    timings = reply["timings"]
    assert (timings["image_tokens"], timings["image_tokens_kept"]) == (sum(n for n, _ in pruned),
                                                                       sum(k for _, k in pruned))
