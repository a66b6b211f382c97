"""The fixtures every test room shares: a seeded generator, the tiny generated pairs, a picture, the llama.cpp build.
Shared functions live in tests/helpers/."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.families import GENERATED_FAMILIES


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20250325)


# --- llama.cpp end-to-end fixtures: the project's tiny generated models and a picture -------------


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory):
    """The tiny pair of every generated family (seed 0), plus llava with its class embedding (-cls)."""
    from topv_edge.lab.synth import write_pair

    out = tmp_path_factory.mktemp("models")
    for family in GENERATED_FAMILIES:
        write_pair(family, "tiny", out, seed=0)
    write_pair("llava", "tiny", out, seed=0, class_embedding=True)
    return out


@pytest.fixture(scope="session")
def picture(tmp_path_factory: pytest.TempPathFactory):
    from topv_edge.lab.synth import demo_image

    path = tmp_path_factory.mktemp("pictures") / "shapes.png"
    demo_image((336, 336), seed=3).save(path)
    return path


@pytest.fixture(scope="session")
def libs():
    """The patched llama.cpp (scripts/build_llama_cpp.sh builds it; .ci/run does)."""
    from topv_edge.llama import libs as llama_libs

    return llama_libs.load()
