"""The trained models' lab: one PyTorch training program for the models the project ships (torch only here:
`pip install torch==2.13.0`, the `train` extra; the product never imports the lab).

    python -m topv_edge.lab.train {demo,scenes} train  [--steps N] [--resume] [--stop-at N] ...  # build/{demo,scenes}_vlm/
    python -m topv_edge.lab.train {demo,scenes} eval   [--n 600] [--seed 1]          # PyTorch, greedy
    python -m topv_edge.lab.train {demo,scenes} export [-o DIR] [--random] [--dtype f16]  # the GGUF pair
    python -m topv_edge.lab.train {demo,scenes} verify [-o DIR] [--n 200] [--from-gguf]   # PyTorch vs llama.cpp
    python -m topv_edge.lab.train {demo,scenes} llama-eval [--n 600 --seed 2]        # accuracy via llama.cpp

  layers.py     the PyTorch blocks (ViT, llama-style text, the VLM shell) computing what llama.cpp computes
  tokenizer.py  the BPE tokenizer, its ids from llama.cpp
  recipe.py     the model definition's interface, packed batches, binding loss, greedy decoding
  loop.py       the training loop (ViT warm-up, schedule, validation, checkpoints)
  gguf_io.py    the weights under GGUF names: export through lab.synth's writer, import from a written pair
  commands.py   the commands; the llama.cpp side is the product's VisionChat and eval.evaluate
  demo.py       the demo model (LLaVA-1.5-style, lab.data.demo): configuration, vision tower, recipe
  scenes.py     the scenes model (Qwen2-VL-style, lab.data.scenes)

`export --random` writes the untrained model and `verify --random` checks that the PyTorch forward is
llama.cpp's before any training; `verify --from-gguf` reads the PyTorch weights back from the pair (the shipped
pairs have no checkpoint in the repo).
"""

MODELS = ("demo", "scenes")


def definition(name: str):
    """The model definition `name` (imports torch)."""
    if name == "demo":
        from .demo import DemoDef

        return DemoDef()
    if name == "scenes":
        from .scenes import ScenesDef

        return ScenesDef()
    raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
