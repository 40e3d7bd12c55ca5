"""HPSv3: its scorer and worker client (score.py), the worker run in .venv-hpsv3 (worker.py) and folder layout
(layout.py)."""
