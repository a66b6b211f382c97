"""The files a user names: the model, its mmproj (found beside it when not given), pictures and videos.

Each check gives one plain line naming the real cause; nothing here loads llama.cpp.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import ChatError


def find_mmproj(model_path: str | Path) -> Path:
    """The mmproj beside `model_path`: a .gguf file whose name contains "mmproj"."""
    model_path = Path(model_path)
    candidates = sorted(p for p in model_path.parent.glob("*.gguf") if "mmproj" in p.name.lower() and p != model_path)
    if not candidates:
        raise ChatError(f"no mmproj found next to {model_path} (a .gguf file whose name contains 'mmproj'); "
                        "pass one with --mmproj")
    if len(candidates) > 1:
        # prefer mmproj-<stem>.gguf (as llama.cpp model repos name them), then the one sharing the model's stem
        exact = [p for p in candidates if p.stem.lower() in (f"mmproj-{model_path.stem}".lower(), f"{model_path.stem}-mmproj".lower())]
        if len(exact) == 1:
            return exact[0]
        same = [p for p in candidates if model_path.stem in p.stem]
        if len(same) == 1:
            return same[0]
        names = ", ".join(p.name for p in candidates)
        raise ChatError(f"several mmproj files next to {model_path}: {names}; choose one with --mmproj")
    return candidates[0]


def check_gguf(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ChatError(f"{what} not found: {path}")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ChatError(f"{what} {path} is not a GGUF file")
    return path


def is_video(data: bytes) -> bool:
    """Whether the bytes start like a video container ffmpeg reads: MP4 / QuickTime (an 'ftyp' box), Matroska /
    WebM, AVI. (A GIF is a picture: Pillow and llama.cpp read it as one.)"""
    return data[4:8] == b"ftyp" or data[:4] == b"\x1a\x45\xdf\xa3" or (data[:4] == b"RIFF" and data[8:12] == b"AVI ")


def check_ffmpeg() -> None:
    """llama.cpp reads a video's frames by running ffprobe and ffmpeg (MTMD_VIDEO): both must be on PATH."""
    missing = [name for name in ("ffmpeg", "ffprobe") if shutil.which(name) is None]
    if missing:
        raise ChatError(f"reading a video needs the {' and '.join(missing)} program{'s' if len(missing) > 1 else ''}"
                        f" on PATH, which llama.cpp runs to decode its frames (Debian/Ubuntu: apt install ffmpeg; "
                        f"macOS: brew install ffmpeg)")


def moov_after_mdat(data: bytes) -> bool:
    """Whether an MP4 / QuickTime file keeps its index (the 'moov' box) after its media data ('mdat'), as most
    encoders write it unless told to "fast start"; False for anything else."""
    pos = 0
    while pos + 8 <= len(data):
        size, kind = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8]
        if kind == b"moov":
            return False
        if kind == b"mdat":
            return True
        if size == 1 and pos + 16 <= len(data):  # a 64-bit size follows the type
            size = int.from_bytes(data[pos + 8:pos + 16], "big")
        if size < 8:  # 0: the box runs to the end of the file
            return False
        pos += size
    return False


def faststart(path: Path, data: bytes) -> bytes:
    """The video with its index first. llama.cpp hands a video to ffprobe and ffmpeg through a pipe, which cannot
    seek back to an index at the end ("ffprobe failed on buffer"), so such an MP4 is remuxed first (a stream copy:
    no frame is re-encoded)."""
    if not moov_after_mdat(data):
        return data
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / ("faststart" + (path.suffix or ".mp4"))
        r = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-map", "0", "-c", "copy",
                            "-movflags", "+faststart", str(out)], capture_output=True, text=True)
        if r.returncode != 0 or not out.is_file():
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise ChatError(f"{path} is a video ffmpeg cannot read ({last})")
        return out.read_bytes()


def _video_path(path: str | Path) -> Path | None:
    """The path ('~' expanded) when it names a video file (is_video), else None."""
    p = Path(path).expanduser()
    if not p.is_file():
        return None
    with open(p, "rb") as f:
        return p if is_video(f.read(12)) else None


def check_media(path: str | Path) -> None:
    """What a command line checks before the model loads: a picture Pillow decodes (read_image), or a video with
    ffmpeg on PATH. (A video's frames are read once, by llama.cpp, when it goes with a message: read_media.)"""
    if _video_path(path) is not None:
        check_ffmpeg()
    else:
        read_image(path)


def read_media(path: str | Path) -> bytes:
    """A picture's bytes (read_image), or a video's (its index first: faststart): llama.cpp decodes its frames
    with ffmpeg."""
    video = _video_path(path)
    if video is None:
        return read_image(path)
    check_ffmpeg()
    return faststart(video, video.read_bytes())


def read_image(path: str | Path) -> bytes:
    """The file's bytes, after checking that Pillow can decode it as an image ('~' is expanded)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path).expanduser()
    if path.is_dir():
        raise ChatError(f"{path} is a directory, not an image")
    if not path.is_file():
        raise ChatError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ChatError(f"{path} is not an image Pillow can read ({e})") from None
    data = path.read_bytes()
    if data[:4] in (b"\x89PNG", b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xe1", b"\xff\xd8\xff\xdb") or data[:3] == b"\xff\xd8\xff":
        return data
    # llama.cpp's loader (stb_image) reads PNG/JPEG/BMP/GIF...; anything else goes through Pillow to PNG
    import io

    with Image.open(path) as im:
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def gguf_architecture(path: Path) -> str | None:
    """general.architecture of a GGUF file (None if absent or unreadable)."""
    import gguf

    try:
        field = gguf.GGUFReader(str(path)).get_field("general.architecture")
    except Exception:  # a damaged file: llama.cpp's own message says more
        return None
    return field.contents() if field is not None else None
