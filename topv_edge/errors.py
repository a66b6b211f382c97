"""The package's errors and the sentences that explain llama.cpp's failures to a user.

Every other module imports its errors from here; this module imports nothing of the package (no cycles).
"""

from __future__ import annotations


class TopVError(ValueError):
    """The pass rejected its input; `status` is the C API's topv_status code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ChatError(Exception):
    """A problem the user can fix (bad file, bad option, a model llama.cpp refuses): one plain line, no traceback."""


class OptionError(ChatError, ValueError):
    """An option out of its range, worded in the library's terms: `name` is the parameter ("keep", "layer", ...).

    The command lines say the same with their flag instead (`with_name("--keep")`)."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name} {problem}")
        self.name = name
        self.problem = problem

    def with_name(self, name: str) -> "OptionError":
        return type(self)(name, self.problem)


class ContextWarning(UserWarning):
    """A context larger than the model was trained for (as llama.cpp warns), worded like OptionError: `name` is the
    parameter ("n_ctx"), and the command lines say their flag instead (`with_name("--ctx")`)."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name} {problem}")
        self.name = name
        self.problem = problem

    def with_name(self, name: str) -> "ContextWarning":
        return type(self)(name, self.problem)


class OptionTypeError(OptionError, TypeError):
    """An option of the wrong type (a bool or a string where a number belongs)."""


class LlamaBuildMissing(RuntimeError):
    """The patched llama.cpp build is not where it should be."""


_DAMAGED = "{path} is truncated or damaged (its tensor data ends early); download it again"
_NO_MEMORY = "not enough memory for {what}"

# llama.cpp's error lines -> what they mean for the user: (substring, sentence); the first match wins
_LOAD_CAUSES: tuple[tuple[str, str], ...] = (
    ("CLIP cannot be used as main model",
     "{path} is a vision projector (mmproj), not a text model: model and --mmproj are swapped?"),
    ("mismatch between text model",
     "the mmproj {mmproj} does not belong to the model {model}: its image embeddings have another width"),
    ("failed to seek", _DAMAGED),
    ("failed to read", _DAMAGED),
    ("not within the file bounds", _DAMAGED),
    ("failed to allocate", _NO_MEMORY),
    ("unable to allocate", _NO_MEMORY),
    ("out of memory", _NO_MEMORY),
    ("bad_alloc", _NO_MEMORY),
    ("cannot find tensor", "{path} lacks tensors its architecture needs: not a file of this kind, or damaged"),
    ("unknown model architecture", "{path} has an architecture this llama.cpp does not know"),
)


class _Names(dict):
    def __missing__(self, key: str) -> str:
        return "it"


def explain_llama_error(errors: list[str], **names: str) -> str:
    """A plain sentence for llama.cpp's error lines of one failing call, with llama.cpp's own first line.

    `names` fills the sentences: path (the file being loaded), model, mmproj, what (what was allocated)."""
    for needle, sentence in _LOAD_CAUSES:
        for line in errors:
            if needle in line:
                return f"{sentence.format_map(_Names(names))} (llama.cpp: {line})"
    if errors:
        return f"llama.cpp said: {errors[0]}"
    return "llama.cpp refused it without an error message (run with -v to see its log)"
