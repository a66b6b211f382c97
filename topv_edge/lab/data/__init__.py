"""The trained models' tasks: demo (coloured shapes) and scenes (clutter, sizes, relations, reading)."""
