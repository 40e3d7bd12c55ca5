"""guidance-harness: benchmark guidance methods for token-sparse diffusion models."""

__version__ = "0.1.0"
