"""The search's decisions, as pure functions of measured scores: rungs, budgets, which points go on, the front.

Nothing here generates or evaluates; every decision is a function of the scores (and their bootstrap intervals,
which are seeded), so the same measurements always give the same promotions and the same front.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from harness.errors import HarnessError

RUNG_DIVISORS = (8, 2)  # default rungs: samples / 8, samples / 2, samples (rounded to whole shards)
DEFAULT_BUDGET = "25%"  # of the full grid's samples


@dataclass(frozen=True)
class Score:
    """One point measured at one rung: its cost and metric value with the metric's bootstrap interval.

    All four numbers are oriented so that lower is better (harness.search.loop flips throughput and
    higher-is-better metrics), so domination reads the same for every metric and cost.
    """

    run: str
    cost: float
    value: float
    lo: float
    hi: float


@dataclass(frozen=True)
class Budget:
    """What the search may spend: `amount` in `unit` ("samples" or "gpu_hours")."""

    amount: float
    unit: str
    text: str


def parse_budget(text: str, full_grid_samples: int) -> Budget:
    """`--budget`: a sample count ("8000"), a share of the full grid's samples ("25%") or GPU-hours ("2.5h")."""
    spec = text.strip().lower().replace(" ", "")
    try:
        if spec.endswith("%"):
            share = float(spec[:-1])
            if not 0 < share <= 100:
                raise ValueError
            return Budget(math.floor(full_grid_samples * share / 100), "samples", text)
        match = re.fullmatch(r"([0-9.]+)(h|gpu-?h|gpu-?hours?)", spec)
        if match:
            hours = float(match.group(1))
            if hours <= 0:
                raise ValueError
            return Budget(hours, "gpu_hours", text)
        samples = int(spec)
        if samples < 1:
            raise ValueError
        return Budget(samples, "samples", text)
    except ValueError:
        raise HarnessError(f"--budget {text!r}: give a sample count (8000), a share of the full grid's samples "
                           f"(25%) or GPU-hours (2.5h), all positive") from None


def default_rungs(samples: int, batch_size: int) -> list[int]:
    """samples / 8, samples / 2 and samples, each rounded to whole shards of batch_size (at least one shard)."""
    sizes = []
    for divisor in RUNG_DIVISORS:
        size = max(batch_size, round(samples / divisor / batch_size) * batch_size)
        if size < samples and size not in sizes:
            sizes.append(size)
    return [*sizes, samples]


def check_rungs(rungs: Sequence[int], samples: int, batch_size: int, where: str = "--rungs") -> list[int]:
    """Rungs as given: increasing, whole shards below the top, and ending at the suite's samples."""
    rungs = [int(r) for r in rungs]
    if not rungs or rungs[-1] != samples:
        raise HarnessError(f"{where} {rungs}: the last rung must be the suite's samples per run ({samples})")
    if any(b <= a for a, b in zip(rungs, rungs[1:])) or rungs[0] < 1:
        raise HarnessError(f"{where} {rungs}: rungs must be positive and increasing")
    bad = [r for r in rungs[:-1] if r % batch_size]
    if bad:
        raise HarnessError(f"{where} {rungs}: {bad} not a multiple of the suite's batch_size {batch_size}; a rung "
                           "must end on a shard boundary so that its images are kept when a point goes on")
    return rungs


def dominators(scores: Sequence[Score]) -> dict[str, str | None]:
    """For each point, a point that surely dominates it (no more cost and an interval wholly better), else None.

    "Surely" respects the bootstrap intervals: q dominates p only when q.cost <= p.cost and q.hi < p.lo, so a point
    whose interval overlaps every cheaper point's can still be on the front. The first such q in input order is
    named, so the answer does not depend on anything but the scores and their order.
    """
    out: dict[str, str | None] = {}
    for p in scores:
        out[p.run] = next((q.run for q in scores if q.run != p.run and q.cost <= p.cost and q.hi < p.lo), None)
    return out


def margins(scores: Sequence[Score]) -> dict[str, float]:
    """How far each point is from being surely dominated: its lower bound minus the best upper bound of any other
    point that costs no more (-inf when none does). Lower means more likely on the front; the search ranks by it."""
    out = {}
    for p in scores:
        cheaper = [q.hi for q in scores if q.run != p.run and q.cost <= p.cost]
        out[p.run] = p.lo - min(cheaper) if cheaper else -math.inf
    return out


def front_layers(scores: Sequence[Score]) -> dict[str, int]:
    """Each point's Pareto layer by point values: 0 for the current front, 1 for the front of the rest, ..."""
    layers, rest, depth = {}, list(scores), 0
    while rest:
        on = set(front(rest))
        layers.update({p.run: depth for p in rest if p.run in on})
        rest, depth = [p for p in rest if p.run not in on], depth + 1
    return layers


def choose_promotions(scores: Sequence[Score], prices: Mapping[str, float], allowance: float,
                      at_least_one: bool = True) -> list[str]:
    """The points that go to the next rung: those not surely dominated, most promising first (the current front
    by point values, then the next Pareto layer, ...; within a layer by margin, then input order), as many as
    `allowance` pays for at `prices` (what each point's next images cost), and with `at_least_one` the most
    promising even when the allowance is smaller (the caller checks that the budget holds it)."""
    dominated = dominators(scores)
    margin, layer = margins(scores), front_layers(scores)
    order = {s.run: i for i, s in enumerate(scores)}
    alive = sorted((s.run for s in scores if dominated[s.run] is None),
                   key=lambda r: (layer[r], margin[r], order[r]))
    chosen, spent = [], 0.0
    for run in alive:
        if spent + prices[run] > allowance + 1e-9 and (chosen or not at_least_one):
            break
        chosen.append(run)
        spent += prices[run]
    return [s.run for s in scores if s.run in chosen]  # input order


def front(scores: Sequence[Score]) -> list[str]:
    """The Pareto front of point values (lower cost and lower value are better), sorted by cost; identical points
    do not dominate each other."""
    on = [p for p in scores if not any((q.cost <= p.cost and q.value <= p.value)
                                       and (q.cost < p.cost or q.value < p.value) for q in scores)]
    return [p.run for p in sorted(on, key=lambda p: p.cost)]


def front_covers(reference: Sequence[Score], found: Sequence[Score]) -> list[str]:
    """Reference front points that `found` does not match: a match is a found point that costs no more and whose
    value lies within (or below) the reference point's bootstrap interval. An empty list means the fronts agree."""
    return [r.run for r in reference if not any(f.cost <= r.cost + 1e-9 * abs(r.cost) and f.value <= r.hi for f in found)]
