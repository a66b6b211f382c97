"""The files a user names: the model, its mmproj (found beside it when not given), pictures.

Each check gives one plain line naming the real cause; nothing here loads llama.cpp.
"""

from __future__ import annotations

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
