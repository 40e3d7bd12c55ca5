"""GenEval: its scorer (score.py), rules (rules.py), colour step (color.py), per-image scoring (image.py), detector
backends (detectors/) and folder layout (layout.py)."""
