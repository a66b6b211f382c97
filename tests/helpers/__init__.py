"""What several test rooms share (pytest puts tests/ on sys.path: pyproject.toml)."""
