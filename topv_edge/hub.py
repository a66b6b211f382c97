"""`-hf REPO[:QUANT]`: a model and its mmproj from the Hugging Face Hub, chosen as llama.cpp's -hf chooses them.

llama.cpp (common/download.cpp at the pinned commit): the model is the first GGUF whose name matches QUANT
followed by '.' or '-' (case-insensitive; default Q4_K_M, then Q8_0, then the first model GGUF), skipping files
named mmproj/imatrix/mtp-/eagle3-/dflash-/dspark-; split models (-00001-of-00003.gguf) are fetched whole and
loaded from their first part; the mmproj is the GGUF with "mmproj" in its name in the model's directory (or
above it), the deepest such directory first, then the quantization closest to the model's (Q8_0 -> 8 bits).

Files go to huggingface_hub's cache ($HF_HOME), with its progress bars on stderr; HF_ENDPOINT and HF_TOKEN work
as for every Hub client. huggingface_hub is an optional dependency (`pip install huggingface-hub`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from .errors import ChatError

DEFAULT_QUANTS = ("Q4_K_M", "Q8_0")  # llama.cpp's order when no quant is given
_NOT_MODELS = ("mmproj", "imatrix", "mtp-", "eagle3-", "dflash-", "dspark-")
_SPLIT = re.compile(r"^(.+)-([0-9]{5})-of-([0-9]{5})$", re.I)
_TAG = re.compile(r"[-.]([A-Z0-9_]+)$", re.I)


def split_repo(repo_tag: str) -> tuple[str, str]:
    """'user/model:Q8_0' -> ('user/model', 'Q8_0'); the quant is '' when not given."""
    repo, _, tag = repo_tag.rpartition(":") if ":" in repo_tag else (repo_tag, "", "")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ChatError(f"-hf expects <user>/<model>[:quant], got {repo_tag!r}")
    return repo, tag


def _split_info(path: str) -> tuple[str, str, int, int]:
    """(prefix, quant tag, part index, part count) of a GGUF's name, as llama.cpp's get_gguf_split_info."""
    prefix = path[: -len(".gguf")] if path.endswith(".gguf") else path
    index = count = 1
    m = _SPLIT.match(prefix)
    if m:
        prefix, index, count = m[1], int(m[2]), int(m[3])
    t = _TAG.search(prefix)
    return prefix, t[1].upper() if t else "", index, count


def _quant_bits(tag: str) -> int:
    m = re.search(r"[0-9]+", tag)
    return int(m[0]) if m else 0


def _is_model(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return name.endswith(".gguf") and not any(k in name for k in _NOT_MODELS)


def choose_model(files: list[str], quant: str = "") -> str | None:
    """The model GGUF llama.cpp's -hf picks for `quant` (None when nothing fits)."""
    def first_parts(matching):
        return [f for f in files if _is_model(f) and matching(f) and not (_split_info(f)[3] > 1 and _split_info(f)[2] != 1)]

    for tag in ([quant] if quant else DEFAULT_QUANTS):
        pattern = re.compile(re.escape(tag) + r"[.-]", re.I)
        found = first_parts(pattern.search)
        if found:
            return found[0]
    if not quant:
        found = first_parts(lambda f: True)
        return found[0] if found else None
    return None


def model_parts(files: list[str], model: str) -> list[str]:
    """All parts of a split model (just `model` when it is one file), in order."""
    prefix, _, _, count = _split_info(model)
    if count <= 1:
        return [model]
    return sorted(f for f in files if _split_info(f)[3] == count and _split_info(f)[0] == prefix)


def choose_mmproj(files: list[str], model: str) -> str | None:
    """The mmproj llama.cpp's -hf takes with `model`: in its directory or above, deepest first, then the closest
    quantization."""
    model_dirs = model.split("/")[:-1]
    model_bits = _quant_bits(_split_info(model)[1])
    best, best_key = None, None
    for f in files:
        if not f.endswith(".gguf") or "mmproj" not in f:
            continue
        dirs = f.split("/")[:-1]
        if dirs != model_dirs[: len(dirs)]:
            continue  # in another branch of the repository
        key = (-len(dirs), abs(_quant_bits(_split_info(f)[1]) - model_bits))
        if best_key is None or key < best_key:
            best, best_key = f, key
    return best


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise ChatError("-hf needs huggingface_hub: pip install huggingface-hub (or pip install 'topv-edge[hf]')") from None
    return huggingface_hub


def download(repo_tag: str, hf_file: str | None = None, token: str | None = None, want_mmproj: bool = True,
             note: Callable[[str], None] = lambda msg: None) -> tuple[Path, Path | None]:
    """(model, mmproj or None) in the Hub cache, downloaded unless already there; `note` hears which files (the
    Hub's own progress bars show on a terminal)."""
    hub = _hub()
    repo, quant = split_repo(repo_tag)
    try:
        files = hub.list_repo_files(repo, token=token)
        if hf_file:
            if hf_file not in files:
                raise ChatError(f"--hf-file {hf_file} is not in {repo}; its GGUF files: {_ggufs(files)}")
            model = hf_file
        else:
            model = choose_model(files, quant)
            if model is None:
                raise ChatError(f"{repo} has no GGUF model{f' of quant {quant}' if quant else ''}; its GGUF files: "
                                f"{_ggufs(files)} (-hf {repo}:QUANT or --hf-file FILE chooses one)")
        mmproj = choose_mmproj(files, model) if want_mmproj else None
        note(f"-hf {repo}: {model}" + (f" and {mmproj}" if mmproj else ""))
        paths = [hub.hf_hub_download(repo, f, token=token) for f in model_parts(files, model)]
        mmproj_path = hub.hf_hub_download(repo, mmproj, token=token) if mmproj else None
    except ChatError:
        raise
    except Exception as e:  # the Hub's errors (no such repository, gated, offline, HTTP): one line
        raise ChatError(f"-hf {repo_tag}: {_hub_problem(e)}") from None
    return Path(paths[0]), Path(mmproj_path) if mmproj_path else None


def _ggufs(files: list[str]) -> str:
    return ", ".join(f for f in files if f.endswith(".gguf")) or "none"


def _hub_problem(e: Exception) -> str:
    """The Hub error's first line, named by its kind (RepositoryNotFoundError -> 'repository not found')."""
    kind = type(e).__name__
    first = str(e).strip().splitlines()[0] if str(e).strip() else kind
    if kind == "RepositoryNotFoundError":
        return f"repository not found (or private: --hf-token) ({first})"
    if kind == "GatedRepoError":
        return f"the repository is gated: accept its terms on the Hub and pass --hf-token ({first})"
    return f"{kind}: {first}"
