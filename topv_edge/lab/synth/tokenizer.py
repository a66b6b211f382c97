"""A byte-level BPE tokenizer (gpt2 style) per family, so that any text tokenises."""

from __future__ import annotations

from dataclasses import dataclass, field, replace


from ...session.templates import (CHATML_TEMPLATE, GEMMA4_TEMPLATE, GEMMA_TEMPLATE, LFM2_TEMPLATE,
                                  LLAVA15_TEMPLATE, MINICPMV26_TEMPLATE, MISTRAL_TEMPLATE, SMOLVLM_TEMPLATE)
from .presets import FAMILIES


def bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_CORPUS = ("the picture shows a red circle a blue square and a green triangle on the left and on the right "
           "what color is the shape how many shapes are there is there a yes no top bottom image question answer "
           "user assistant system describe object")


@dataclass(frozen=True)
class Tokenizer:
    tokens: list[str]
    types: list[int]            # 1 normal, 3 control
    merges: list[str]
    bos: int
    eos: int
    chat_template: str
    special: dict[str, int] = field(default_factory=dict)


def make_tokenizer(specials: list[str], chat_template: str, n_merges: int = 48, corpus: str = _CORPUS) -> Tokenizer:
    """Byte tokens, `n_merges` BPE merges learnt greedily on `corpus` (deterministic), then the special tokens."""
    b2u = bytes_to_unicode()
    tokens = [b2u[b] for b in range(256)]
    words = [[b2u[b] for b in (" " + w).encode()] for w in corpus.split()]
    merges: list[str] = []
    for _ in range(n_merges):
        counts: dict[tuple[str, str], int] = {}
        for w in words:
            for a, b in zip(w, w[1:]):
                counts[(a, b)] = counts.get((a, b), 0) + 1
        if not counts:
            break
        (a, b), _ = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append(f"{a} {b}")
        tokens.append(a + b)
        for w in words:
            i = 0
            while i < len(w) - 1:
                if w[i] == a and w[i + 1] == b:
                    w[i:i + 2] = [a + b]
                i += 1
    types = [1] * len(tokens)
    special = {}
    for s in specials:
        special[s] = len(tokens)
        tokens.append(s)
        types.append(3)
    return Tokenizer(tokens, types, merges, bos=special[specials[0]], eos=special[specials[1]],
                     chat_template=chat_template, special=special)


_QWEN_SPECIALS = ["<|endoftext|>", "<|im_end|>", "<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]


def family_tokenizer(family: str) -> Tokenizer:
    """The family's tokenizer: BOS, EOS first, then the chat and image markers its template and mtmd use."""
    if family == "llava":
        return make_tokenizer(["<s>", "</s>"], LLAVA15_TEMPLATE)
    if family == "llava16":  # llava-v1.6-vicuna: LLaVA-1.5's format; mtmd puts no markers between the tiles
        return make_tokenizer(["<s>", "</s>"], LLAVA15_TEMPLATE)
    if family == "minicpmv":  # mtmd looks up <image> </image> <slice> </slice> and "\n" (a byte token here)
        return make_tokenizer(["<|endoftext|>", "<|im_end|>", "<|im_start|>", "<image>", "</image>", "<slice>",
                               "</slice>"], MINICPMV26_TEMPLATE)
    if family in ("qwen2vl", "qwen25vl", "qwen3vl", "qwen35"):
        return make_tokenizer(_QWEN_SPECIALS, CHATML_TEMPLATE)
    if family == "gemma3":
        return make_tokenizer(["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                               "<end_of_image>"], GEMMA_TEMPLATE)
    if family == "gemma4":  # mtmd wraps each image in <|image> ... <image|>
        return make_tokenizer(["<bos>", "<eos>", "<|turn>", "<turn|>", "<|image>", "<image|>"], GEMMA4_TEMPLATE)
    if family == "pixtral":  # mtmd ends each image with [IMG_END]; [IMG_BREAK] is an embedding in the mmproj
        return make_tokenizer(["<s>", "</s>", "[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "[IMG_END]"],
                              MISTRAL_TEMPLATE)
    if family == "smolvlm":  # mtmd looks up "\n\n", "<fake_token_around_image>", "<global-img>", "\n", <row_R_col_C>
        rows = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]  # 6 x 6, as SmolVLM's vocabulary
        return _with_merged_token(make_tokenizer(["<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>",
                                                  "<global-img>", "<image>"] + rows, SMOLVLM_TEMPLATE), "\n\n")
    if family == "internvl":  # mtmd wraps the tiles and the overview in <img> ... </img>
        return make_tokenizer(["<|endoftext|>", "<|im_end|>", "<|im_start|>", "<img>", "</img>", "<IMG_CONTEXT>"],
                              CHATML_TEMPLATE)
    if family == "lfm2":  # mtmd: <|image_start|> [<|img_row_R_col_C|> tile ...] [<|img_thumbnail|>] image <|image_end|>
        rows = [f"<|img_row_{r}_col_{c}|>" for r in range(1, 11) for c in range(1, 11) if r * c <= 10]  # <= 10 tiles
        return make_tokenizer(["<|startoftext|>", "<|im_end|>", "<|im_start|>", "<|pad|>", "<image>",
                               "<|image_start|>", "<|image_end|>", "<|img_thumbnail|>"] + rows, LFM2_TEMPLATE)
    raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")


def _with_merged_token(tok: Tokenizer, text: str) -> Tokenizer:
    """`tok` plus an ordinary token for the two bytes of `text` and the BPE merge that makes it (SmolLM2's
    vocabulary has "\\n\\n" as one token; mtmd's lookup_token compares the pieces' text)."""
    a, b = (bytes_to_unicode()[c] for c in text.encode())
    return replace(tok, tokens=tok.tokens + [a + b], types=tok.types + [1], merges=tok.merges + [f"{a} {b}"])
