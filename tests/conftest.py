from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20250325)


def select_topv(*args, **kwargs):
    """topv_edge.select with TopV's transport pass unless the call names another method (the product's default
    method is another one): the pass tests are about every method, TopV first."""
    import topv_edge

    return topv_edge.select(*args, **{"method": "topv", **kwargs})


def random_features(rng: np.random.Generator, n: int, d: int, kind: str = "correlated") -> tuple[np.ndarray, np.ndarray]:
    """Source and target features shaped like a layer's input and its post-attention norm output."""
    source = rng.standard_normal((n, d)).astype(np.float32)
    if kind == "independent":
        target = rng.standard_normal((n, d)).astype(np.float32)
    elif kind == "outliers":  # LLM hidden states carry a few huge channels
        source[:, : max(1, d // 64)] *= 50.0
        target = (0.7 * source + rng.standard_normal((n, d))).astype(np.float32)
    else:
        target = (source + 0.5 * rng.standard_normal((n, d))).astype(np.float32)
    return source, target


# --- llama.cpp end-to-end fixtures: the project's tiny generated models and a picture -------------

FAMILIES = ("llava", "qwen2vl", "gemma3")  # the families the TopV stage prunes (tests of pruning run on these)
# every family the generator writes (topv_edge.synthetic.FAMILIES), in the order of docs/families.md
GENERATED_FAMILIES = ("llava", "gemma3", "gemma4", "qwen2vl", "qwen25vl", "qwen3vl", "qwen35", "pixtral")


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory):
    """The tiny pair of every generated family (seed 0), plus llava with its class embedding (-cls)."""
    from topv_edge.synthetic import write_pair

    out = tmp_path_factory.mktemp("models")
    for family in GENERATED_FAMILIES:
        write_pair(family, "tiny", out, seed=0)
    write_pair("llava", "tiny", out, seed=0, class_embedding=True)
    return out


@pytest.fixture(scope="session")
def picture(tmp_path_factory: pytest.TempPathFactory):
    from topv_edge.synthetic import demo_image

    path = tmp_path_factory.mktemp("pictures") / "shapes.png"
    demo_image((336, 336), seed=3).save(path)
    return path


@pytest.fixture(scope="session")
def libs():
    """The patched llama.cpp (scripts/build_llama_cpp.sh builds it; .ci/run does)."""
    from topv_edge import llama_libs

    return llama_libs.load()
