"""The TopV-patched llama.cpp: where its build lives (build), loading it and binding the stage's C API (libs),
driving the stage from Python (stage), and the stage's layout table (families)."""
