"""Where the TopV-patched llama.cpp build lives: the one definition of the build cache's layout and stamp.

scripts/build_llama_cpp.sh runs this file as a script (`python3 topv_edge/llama/build.py shell --backend B`)
before the package is installed, so it uses the standard library only and no package imports; the package
imports it to find the build it loads and to tell when that build is stale.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

LLAMA_CPP_COMMIT = "0c1e57098bba"
# the source checkout (an installed package has no native/ beside it: no stale check then)
REPO_ROOT = Path(__file__).resolve().parents[2]
BACKENDS = ("cpu", "vulkan", "cuda", "metal")  # scripts/build_llama_cpp.sh --backend


try:  # imported as part of the package: the package's error; run as a script by the build: a local stand-in
    from ..errors import LlamaBuildMissing
except ImportError:
    class LlamaBuildMissing(RuntimeError):  # type: ignore[no-redef]
        pass


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "topv-edge"


def backend_build_dir(backend: str) -> Path:
    """The build directory of one backend (scripts/build_llama_cpp.sh --backend B --print-dir)."""
    if backend not in BACKENDS:
        raise LlamaBuildMissing(f"unknown llama.cpp backend {backend!r}: one of {', '.join(BACKENDS)}")
    return cache_root() / f"llama.cpp-{LLAMA_CPP_COMMIT}-{backend}"


def installed_backend() -> str | None:
    """The backend scripts/install.sh last installed (its marker file in the cache), None if none."""
    try:
        name = (cache_root() / "installed-backend").read_text().strip()
    except OSError:
        return None
    return name if name in BACKENDS else None


def build_dir(backend: str | None = None) -> Path:
    """The patched build: TOPV_EDGE_LLAMA_DIR if set, else the build of `backend`, TOPV_EDGE_BACKEND, the backend
    scripts/install.sh installed, or the CPU build, in that order."""
    override = os.environ.get("TOPV_EDGE_LLAMA_DIR")
    if override:
        return Path(override)
    return backend_build_dir(backend or os.environ.get("TOPV_EDGE_BACKEND") or installed_backend() or "cpu")


def read_stamp(directory: Path) -> dict[str, str]:
    """A build's stamp (written by scripts/build_llama_cpp.sh): line 1 what it was built from, as key=value words
    ending with cmake_args=, whose value is the rest of the line (CMake flags hold spaces); line 2 targets=, the
    CMake targets built from it. {} when there is no stamp."""
    try:
        lines = (directory / ".built").read_text().splitlines()
    except OSError:
        return {}
    first, _, cmake_args = (lines[0] if lines else "").partition(" cmake_args=")
    stamp = dict(w.split("=", 1) for w in first.split() if "=" in w)
    stamp["cmake_args"] = cmake_args
    if len(lines) > 1 and lines[1].startswith("targets="):
        stamp["targets"] = lines[1].removeprefix("targets=")
    return stamp


def build_backend(directory: Path) -> str:
    """The backend a build was made for, from its stamp (builds before the --backend option: cpu)."""
    return read_stamp(directory).get("backend", "cpu")


def source_hashes(root: Path = REPO_ROOT) -> tuple[str, str] | None:
    """(patches, native) hashes of the checkout at `root`, as the build's stamp records them; None when the
    sources are not at hand (an installed package without native/). native/tests/ is not part of the build."""
    patches = sorted((root / "patches").glob("*.patch"))
    native = root / "native"
    if not patches or not native.is_dir():
        return None
    patch_hash = hashlib.sha256(b"".join(p.read_bytes() for p in patches)).hexdigest()[:16]
    files = sorted(str(f.relative_to(root)) for f in native.rglob("*")
                   if f.is_file() and not str(f.relative_to(root)).startswith("native/tests/"))
    listing = "".join(f"{hashlib.sha256((root / f).read_bytes()).hexdigest()}  {f}\n" for f in files)
    return patch_hash, hashlib.sha256(listing.encode()).hexdigest()[:16]


def stale_build_message(directory: Path, root: Path = REPO_ROOT) -> str | None:
    """Why the build in `directory` does not match the patches/ and native/ of the checkout at `root` (None: it
    does, or the sources or the stamp are not there to compare)."""
    hashes = source_hashes(root)
    stamp = read_stamp(directory)
    if not stamp or hashes is None or (stamp.get("patches"), stamp.get("native")) == hashes:
        return None
    backend = build_backend(directory)
    return (f"the patched llama.cpp in {directory} was built from other patches/ or native/ sources than this "
            f"checkout's; rebuild it: bash scripts/build_llama_cpp.sh --backend {backend}")


# The CMake targets of a build: the libraries the package loads (scripts/install.sh builds these alone, with
# build_llama_cpp.sh --libs), and llama.cpp's programs, which program() builds on first use.
LIBRARY_TARGETS = ("llama", "mtmd", "ggml-rpc")
PROGRAMS = ("llama-mtmd-cli", "llama-server", "llama-quantize", "ggml-rpc-server")


def program(name: str, directory: Path | None = None) -> Path:
    """The path of one of llama.cpp's programs in a build (default: the one topv_edge loads). scripts/install.sh
    builds only the libraries, so on first use this builds the programs into that build (minutes, once; the
    build script is incremental and locked per build) with the CMake flags the build was made with."""
    directory = directory or build_dir()
    exe = directory / "bin" / name
    if exe.is_file():
        return exe
    script = REPO_ROOT / "scripts" / "build_llama_cpp.sh"
    if name not in PROGRAMS or not script.is_file():
        raise LlamaBuildMissing(f"{exe} is missing: build it with scripts/build_llama_cpp.sh of the topv-edge checkout")
    stamp = read_stamp(directory)  # build with the CMake flags the build was configured with
    cmake_args = stamp["cmake_args"] if stamp else os.environ.get("CMAKE_ARGS", "")
    print(f"building llama.cpp's programs into {directory} (once; a few minutes)...", file=sys.stderr, flush=True)
    env = {k: v for k, v in os.environ.items() if k != "TARGETS"}
    env.update(TOPV_EDGE_LLAMA_DIR=str(directory), CMAKE_ARGS=cmake_args)
    import subprocess  # here: build.py runs as a script before install and needs none of this then

    r = subprocess.run(["bash", str(script), "--backend", build_backend(directory)], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0 or not exe.is_file():
        tail = "\n".join(r.stderr.strip().splitlines()[-15:])
        raise LlamaBuildMissing(f"building llama.cpp's programs into {directory} failed (exit {r.returncode}):\n{tail}")
    return exe


def point_llama_cpp_at_build() -> None:
    """Make a later `import llama_cpp` load the patched build (if it is built and nothing else is set)."""
    lib_dir = build_dir() / "lib"
    if lib_dir.is_dir():
        os.environ.setdefault("LLAMA_CPP_LIB_PATH", str(lib_dir))
        os.environ.setdefault("MTMD_CPP_LIB", str(lib_dir))


def main(argv: list[str] | None = None) -> int:
    """`shell --backend B`: the build script's variables (commit, cache root, prefix, source hashes, the targets)
    as shell lines."""
    ap = argparse.ArgumentParser(prog="build.py", description=main.__doc__)
    ap.add_argument("what", choices=["shell"])
    ap.add_argument("--backend", choices=BACKENDS, required=True)
    args = ap.parse_args(argv)
    hashes = source_hashes()
    if hashes is None:
        print("build.py: patches/ or native/ not found beside topv_edge/", file=sys.stderr)
        return 2
    print(f"llama_cpp_commit={LLAMA_CPP_COMMIT}")
    print(f"cache_root='{cache_root()}'")
    print(f"prefix='{build_dir(args.backend)}'")
    print(f"patch_hash={hashes[0]}")
    print(f"native_hash={hashes[1]}")
    print(f"library_targets='{' '.join(LIBRARY_TARGETS)}'")
    print(f"program_targets='{' '.join(PROGRAMS)}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
