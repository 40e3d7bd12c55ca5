"""Compute accounting: FLOPs counted on fake tensors (flops.py, t2i_flops.py for text encoders and VAEs) and the
throughput and memory measured during generation (throughput.py, which writes cost.json)."""

from harness.cost.flops import count_forward, run_cost
from harness.cost.throughput import measure_costs, measure_throughput

__all__ = ["count_forward", "measure_costs", "measure_throughput", "run_cost"]
