"""What a turn did, for people and for --json: per picture (or video) and per turn (per image chunk: ImageReport)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ..llama.stage import ImageReport


@dataclass
class PictureReport:
    """One picture of a turn and its image chunks (one, or an overview and tiles), or one video and its frames'
    chunks, in decode order."""
    index: int
    chunks: list[ImageReport]

    @property
    def is_video(self) -> bool:
        return bool(self.chunks[0].video)

    @property
    def n_frames(self) -> int:
        return sum(c.n_frames for c in self.chunks) if self.is_video else 0

    @property
    def n_tokens(self) -> int:
        return sum(c.n_tokens for c in self.chunks)

    @property
    def n_kept(self) -> int:
        return sum(c.n_kept for c in self.chunks)

    @property
    def n_tiles(self) -> int:
        return sum(c.role == "tile" for c in self.chunks)

    @property
    def tiles(self) -> tuple[int, int]:
        return self.chunks[0].tiles

    def as_dict(self) -> dict[str, Any]:
        chunks = []
        for c in self.chunks:
            d = {"role": c.role, "tile": list(c.tile) if c.tile else None, "n_tokens": c.n_tokens,
                 "n_kept": c.n_kept, "pruned": c.pruned, "note": c.note}
            if self.is_video:
                d["frames"] = [c.frame, c.n_frames]  # first frame, frames merged in the chunk
            chunks.append(d)
        return {"picture": self.index, "video": self.is_video, "frames": self.n_frames, "tiles": self.n_tiles,
                "tile_grid": list(self.tiles), "n_tokens": self.n_tokens, "n_kept": self.n_kept,
                "kept_fraction": self.n_kept / self.n_tokens if self.n_tokens else 1.0, "chunks": chunks}


def group_pictures(images: list[ImageReport]) -> list[PictureReport]:
    """The chunks of a turn grouped into their pictures (consecutive chunks with the same picture index) and
    videos (consecutive chunks of the same video: its frames, one chunk each or two merged)."""
    pictures: list[PictureReport] = []
    for im in images:
        last = pictures[-1].chunks[-1] if pictures else None
        if last is not None and im.video and im.video == last.video:
            pictures[-1].chunks.append(im)
        elif last is not None and not im.video and not last.video and pictures[-1].index == im.picture \
                and im.role != "single":
            pictures[-1].chunks.append(im)
        else:
            pictures.append(PictureReport(im.picture, [im]))
    return pictures


@dataclass
class TurnReport:
    images: list[ImageReport]
    text_tokens: int      # prompt text tokens evaluated this turn
    prefill_ms: float     # all prompt chunks (text + images), encode included
    ttft_ms: float        # from the start of the turn to the first answer token
    generated_tokens: int
    generate_ms: float
    kv_cells: int         # KV cells in use after the turn (text + kept image tokens + answer)
    n_ctx: int
    keep: str = "all"     # the requested keep, unambiguous: "25%" (a ratio) or "16 tokens" (a count)
    keep_ratio: float | None = None  # the requested ratio (None when keep is a count or pruning is off)
    keep_count: int | None = None    # the requested count (None when keep is a ratio or pruning is off)
    method: str = ""      # the method that chose the kept tokens
    layer: int | None = None  # the probe layer Li the method read
    overview_weight: float = math.inf  # tiled pictures: the overview's weight in the picture's budget
    params: dict[str, float | int] = field(default_factory=dict)  # every pass parameter used ({} unpruned)
    stopped: bool = False  # the answer was cut short by the caller (Ctrl-C in the chat)

    @property
    def pictures(self) -> list[PictureReport]:
        return group_pictures(self.images)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for im, di in zip(self.images, d["images"]):
            di["kept_fraction"] = im.kept_fraction
        d["image_tokens"] = sum(i.n_tokens for i in self.images)
        d["kept_tokens"] = sum(i.n_kept for i in self.images)
        d["pictures"] = [p.as_dict() for p in self.pictures]
        return d
