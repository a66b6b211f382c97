"""Make directory DST hold exactly the files of SRC, rewriting only files whose content differs.

Used by build_llama_cpp.sh: a re-patched llama.cpp tree is synced into the build's source directory so that
unchanged files keep their timestamps and the incremental build recompiles only what a patch changed.
(A plain copy would touch every file; restoring old timestamps would hide reverted edits from the build.)
"""

from __future__ import annotations

import filecmp
import shutil
import sys
from pathlib import Path


def sync(src: Path, dst: Path) -> tuple[list[Path], list[Path]]:
    """Returns the files written and the files removed (relative paths)."""
    written: list[Path] = []
    removed: list[Path] = []
    dst.mkdir(parents=True, exist_ok=True)
    wanted: set[Path] = set()
    for s in src.rglob("*"):
        rel = s.relative_to(src)
        wanted.add(rel)
        d = dst / rel
        if s.is_dir() and not s.is_symlink():
            d.mkdir(parents=True, exist_ok=True)
        elif not d.exists() or d.is_dir() or not filecmp.cmp(s, d, shallow=False):
            if d.is_dir():
                shutil.rmtree(d)
            shutil.copy2(s, d, follow_symlinks=False)
            d.touch()  # newer than any object built from the old content
            written.append(rel)
    for d in sorted(dst.rglob("*"), reverse=True):
        if d.relative_to(dst) not in wanted:
            if d.is_dir() and not d.is_symlink():
                shutil.rmtree(d)
            else:
                d.unlink()
            removed.append(d.relative_to(dst))
    return written, removed


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: sync_tree.py SRC DST", file=sys.stderr)
        return 2
    written, removed = sync(Path(argv[0]), Path(argv[1]))
    print(f"source tree: {len(written)} file(s) updated, {len(removed)} removed")
    for rel in written[:40]:
        print(f"  updated {rel}")
    for rel in removed[:40]:
        print(f"  removed {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
