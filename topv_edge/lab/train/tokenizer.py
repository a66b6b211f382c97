"""The trained models' tokenizer: the project's gpt2-style BPE (lab.synth.make_tokenizer), merges learnt on
the task's words. Token ids come from llama.cpp itself (a vocab-only load of a GGUF holding the tokenizer),
so training sees exactly the ids llama.cpp produces for the chat template's text."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...llama import libs as llama_libs
from ...session.templates import compile_chat_template
from .. import synth as S

MARKER = "<__media__>"


@dataclass(frozen=True)
class TokenizerSpec:
    """What a model's tokenizer is made of: the special tokens (BOS, EOS first), the chat template, the corpus;
    image_begin / image_end: the text mtmd puts around the image (part of the prompt pieces); add_bos: the
    text model's GGUF adds a BOS (llama) or not (qwen2vl)."""

    specials: tuple[str, ...]
    chat_template: str
    corpus: str
    add_bos: bool = True
    image_begin: str = ""
    image_end: str = ""

    def make(self) -> S.Tokenizer:
        return S.make_tokenizer(list(self.specials), self.chat_template, n_merges=1000, corpus=self.corpus)


def render_prompt(template, question: str) -> str:
    """A compiled chat template's rendering of one user turn, image first (the runtime's message shape)."""
    return template.render(messages=[{"role": "user", "content": [{"type": "text", "text": MARKER},
                                                                  {"type": "text", "text": question}]}],
                           add_generation_prompt=True)


class Tok:
    """Encode and decode a model's prompt pieces with llama.cpp's tokenizer (workdir holds its vocab.gguf)."""

    def __init__(self, spec: TokenizerSpec, workdir: Path) -> None:
        self.spec_def = spec
        self.spec = spec.make()
        path = workdir / "vocab.gguf"
        workdir.mkdir(parents=True, exist_ok=True)
        tcfg = S.TextConfig(n_embd=8, n_ff=16, n_layer=1, n_head=1, n_head_kv=1)
        w = S.random_weights(S.text_weight_shapes(tcfg, len(self.spec.tokens)), np.random.default_rng(0))
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        S.write_text_model(tmp, tcfg, self.spec, w, name="vocab")
        tmp.replace(path)
        self.llm = llama_libs.load().llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
        self.bos, self.eos = self.spec.bos, self.spec.eos
        self.n_vocab = len(self.spec.tokens)
        self._cache: dict[tuple[str, bool], list[int]] = {}
        self.template = compile_chat_template(self.spec.chat_template)
        self._u2b = {u: b for b, u in S.bytes_to_unicode().items()}

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        key = (text, add_bos)
        if key not in self._cache:
            self._cache[key] = list(self.llm.tokenize(text.encode(), add_bos=add_bos, special=True))
        return self._cache[key]

    def decode(self, ids: list[int]) -> str:
        """The text of ids, control tokens (BOS, EOS, the image markers) left out."""
        out = bytearray()
        for i in ids:
            if self.spec.types[i] == 3:
                continue
            out += bytes(self._u2b[ch] for ch in self.spec.tokens[i])
        return out.decode("utf-8", "replace")

    # the pieces of a single-question prompt, the template's text split at the media marker (as mtmd does)
    def prefix(self) -> list[int]:
        text = render_prompt(self.template, "").split(MARKER)[0] + self.spec_def.image_begin
        return self.encode(text, add_bos=self.spec_def.add_bos)

    def question(self, q: str) -> list[int]:
        return self.encode(self.spec_def.image_end + render_prompt(self.template, q).split(MARKER)[1])

    def answer(self, a: str) -> list[int]:
        return self.encode(f" {a}") + [self.eos]
