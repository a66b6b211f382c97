"""The families the tests run on."""

FAMILIES = ("llava", "qwen2vl", "gemma3")  # the families the TopV stage prunes (tests of pruning run on these)
# every family the generator writes (topv_edge.lab.synth.FAMILIES), in the order of docs/families.md
GENERATED_FAMILIES = ("llava", "gemma3", "gemma4", "qwen2vl", "qwen25vl", "qwen3vl", "qwen35", "pixtral")
