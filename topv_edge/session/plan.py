"""What a prompt's chunks will take in the KV cache, before any of them is evaluated.

An image chunk's kept tokens are the stage's to say (a tiled picture's chunks share one budget), so the plan
asks it (mtmd_topv_chunk_n_kept); the context is then sized from the plan, not from the unpruned prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


@dataclass(frozen=True)
class ChunkPlan:
    chunk: Any        # the mtmd_input_chunk (owned by the chunk list it came from)
    is_image: bool
    n_tokens: int     # tokens (an image: before pruning)
    n_cells: int      # KV cells it will take (an image: text-free kept tokens + structural tokens)

    @property
    def is_pruned(self) -> bool:
        return self.is_image and self.n_cells < self.n_tokens


@dataclass(frozen=True)
class PromptPlan:
    chunks: Sequence[ChunkPlan]
    probes: bool = True  # the stage decodes a picture whole before pruning it (TopVOptions.probes)

    @property
    def n_cells(self) -> int:
        """Cells the chunks take once evaluated."""
        return sum(c.n_cells for c in self.chunks)

    @property
    def peak_cells(self) -> int:
        """Cells at the fullest moment: a probe decodes a whole image before it is pruned, so for a moment the
        cache holds the cells before the image plus all of its tokens; without a probe only kept cells ever do."""
        if not self.probes:
            return self.n_cells
        peak, cells = self.n_cells, 0
        for c in self.chunks:
            if c.is_pruned:
                peak = max(peak, cells + c.n_tokens)
            cells += c.n_cells
        return peak

    @property
    def largest_image(self) -> int:
        """The ubatch the prompt wants: the largest image a probe decodes whole (without a probe: the largest
        image's cells; llama.cpp caps the batch at n_ctx, so it never asks for more than the context holds)."""
        return max((c.n_tokens if (c.is_pruned and self.probes) else c.n_cells for c in self.chunks if c.is_image),
                   default=0)

    def probed_images_over(self, n_ubatch: int) -> list[int]:
        """Token counts of the images the stage would probe that do not fit one ubatch of `n_ubatch`."""
        return [c.n_tokens for c in self.chunks if c.is_pruned and self.probes and c.n_tokens > n_ubatch]
