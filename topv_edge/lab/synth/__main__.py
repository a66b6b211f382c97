"""python -m topv_edge.lab.synth: write a model pair (see topv_edge.lab.synth.pairs.main)."""

from .pairs import main

raise SystemExit(main())
