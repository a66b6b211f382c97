"""The model-making lab: what the tests, the benchmarks and the trained models are made with. The product
(everything else in topv_edge) never imports it.

  synth/    the GGUF writer: model pairs of every supported family in their real layouts (random or given
            weights), llama.cpp's picture tiling, test pictures
  data/     the trained models' tasks: procedural pictures, questions, seeded splits (demo: shapes; scenes)
  train/    the one PyTorch training program of the trained models (torch: the `train` extra), with
            a definition per model (demo, scenes): python -m topv_edge.lab.train MODEL COMMAND
  models/   the second trained model's files (not in the wheel: tests and scripts use it from the checkout)
"""
