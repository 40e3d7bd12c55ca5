"""FLOPs per image per sampling step in two conventions, counted on fake tensors (no weights, no GPU).

FLOPs are multiply-accumulates (one multiply-add = 1, the field's "GFLOPs"), counted per image per sampling step
and summed over the branches a run actually computes (guidance intervals and omega = 1 skip the weak branch, gamma
schedules change the token count from step to step, AG's weak model may be another size):

- `gflops`: linear and conv MACs, fused attention not counted: what fvcore's FlopCountAnalysis counts on these
  models with F.scaled_dot_product_attention (its `linear` and `conv` handles; SDPA is an unsupported op, so 0).
  The SG paper's convention: SiT-XL/2 + route r2->24 gives 114.39 dense (paper 114.42), 97.66 for SG(0.5, 0.9)
  (paper 97.67). fvcore also adds 4 "flops" per element for each LayerNorm and 4096 for the unpatchify einsum; that
  is not a MAC and is 0.06% of SiT-XL/2, so it is left out (tests check linear + conv against fvcore itself).
- `gflops_full`: the attention matmuls (QK^T and AV) counted too, DiT's convention (dense DiT-XL/2 = 118.62).

Both come from one pass of torch.utils.flop_counter.FlopCounterMode (2 FLOPs per MAC, halved here) over the network
built under FakeTensorMode: shapes only, no weights, no arithmetic, so SiT-XL/2 is counted in a fraction of a
second. fvcore itself cannot count this way: it traces with torch.jit.trace, which fails on meta and fake tensors
(the meta convolution kernel receives traced sizes), so it would need the real 2.7 GB of SiT-XL/2 weights and ~10 s
per count on a CPU. Under fake CPU tensors SDPA dispatches to aten._scaled_dot_product_flash_attention_for_cpu,
which FlopCounterMode has no formula for; it gets the formula torch registers for the CUDA flash kernel, and that
op's count is what separates the two conventions. A count depends on gamma only through int(N * gamma), the number
of tokens routed or masked, so counts are cached per (config, token count).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from harness.errors import HarnessError
from harness.guidance import GuidanceSpec, step_index
from harness.models import ModelSpec, family_of
from harness.models.batching import FORWARD_ROWS
from harness.models.perturb import perturbed
from harness.models.tokens import num_sparse
from harness.sampling import SamplerSpec

aten = torch.ops.aten
# The fused attention kernels FlopCounterMode can see; their count is what `gflops` leaves out.
ATTENTION_OPS = frozenset({
    aten._scaled_dot_product_flash_attention_for_cpu, aten._scaled_dot_product_flash_attention,
    aten._scaled_dot_product_efficient_attention, aten._scaled_dot_product_cudnn_attention,
})


def _cpu_flash_attention_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of the CPU flash-attention op: torch's own formula for its CUDA flash op, 2*b*h*s_q*s_k*(d_q + d_v)."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


@functools.lru_cache(maxsize=8)
def _fake_network(config) -> tuple[FakeTensorMode, torch.nn.Module]:
    """The network of `config` (any model family) with fake parameters (shapes only), and the mode that owns them."""
    mode = FakeTensorMode()
    with mode:
        net = family_of(config).network(config).eval()
    return mode, net


@functools.lru_cache(maxsize=None)
def _count_tokens(config, sparse_tokens: int, perturbation=None) -> tuple[int, int]:
    """(linear/conv FLOPs, attention FLOPs) of one single-image forward with `sparse_tokens` routed or masked,
    perturbed as a guidance branch says (harness.models.perturb: identity attention has no attention matmuls, SEG's
    blur is a depthwise conv, skipped blocks and a dropped route cost nothing).

    Counted on a chunk of FORWARD_ROWS images (the shape every network call has) and divided: every count is linear
    in the batch."""
    n = config.num_tokens
    batch = FORWARD_ROWS
    gamma = 0.0 if sparse_tokens == 0 else (sparse_tokens + 0.5) / n  # any gamma with int(n * gamma) = sparse_tokens
    mode, net = _fake_network(config)
    counter = FlopCounterMode(display=False, custom_mapping={
        aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flop})
    with mode, torch.no_grad(), sdpa_kernel([SDPBackend.FLASH_ATTENTION]), perturbed(net, perturbation):
        x, t, cond = net.dummy_inputs(batch)
        with counter:
            net(x, t, cond, gamma)
    counts = counter.get_flop_counts()["Global"]
    attention = sum(v for op, v in counts.items() if op in ATTENTION_OPS)
    if attention == 0:
        raise RuntimeError(f"FlopCounterMode saw no attention kernel among {sorted(map(str, counts))}")
    return (sum(counts.values()) - attention) // batch, attention // batch


def count_forward(config, gamma: float, perturbation=None) -> tuple[float, float]:
    """GMACs of one network forward for one image at token sparsity gamma, perturbed or not: (fvcore convention,
    full)."""
    if gamma > 0 and config.sparsity == "none":
        raise ValueError(f"a model with sparsity 'none' cannot run at gamma {gamma:g}")
    linear, attention = _count_tokens(config, num_sparse(config.num_tokens, gamma), perturbation)
    return linear / 2e9, (linear + attention) / 2e9


def run_cost(models: Mapping[str, ModelSpec], guidance: GuidanceSpec, sampler: SamplerSpec) -> dict[str, Any]:
    """FLOPs of one run: per image per sampling step (`gflops`, `gflops_full`), per image (`tflops_image`), NFE
    (network forwards per image, every branch counted), `forwards` per step (nfe / steps) and `gflops_branches`
    (branch label -> GFLOPs per image per step; the strong branch is "cond").

    `models` maps the roles GuidedDenoiser uses ("main", and "weak" for ag / ag+sg) to their specs. Every denoiser
    call of the sampler (SamplerSpec.evaluations) is charged the branches GuidanceSpec.branches_at says it computes,
    each at its own gamma and on its own model; CFG's batched branches cost what two forwards cost (the count is
    linear in the batch). Per step = per image over the whole sampling / steps (Heun's step makes two calls).
    """
    configs = {role: spec.config()[0] for role, spec in models.items()}
    total = total_full = 0.0
    nfe = 0
    branches: dict[str, float] = {}
    depth = getattr(configs.get("main"), "depth", None)
    for t, progress in sampler.evaluations():
        step = step_index(progress, sampler.steps)
        for branch, gamma in guidance.branches_at(t, progress, step, sampler.steps, depth):
            if branch.model not in configs:
                raise HarnessError(f"method {guidance.method!r} needs a {branch.model!r} model; got {sorted(models)}")
            config = configs[branch.model]
            if gamma > 0 and config.sparsity == "none":
                raise HarnessError(f"the {branch.model!r} model ({models[branch.model].arch}) has sparsity 'none' "
                                   f"but method {guidance.method!r} runs it at gamma {gamma:g}")
            try:
                gmacs, gmacs_full = count_forward(config, gamma, branch.perturb)
            except ValueError as err:  # a perturbation the network cannot run
                raise HarnessError(f"method {guidance.method!r}: {err}") from None
            total += gmacs
            total_full += gmacs_full
            branches[branch.label] = branches.get(branch.label, 0.0) + gmacs / sampler.steps
            nfe += 1
    return {"gflops": total / sampler.steps, "gflops_full": total_full / sampler.steps, "tflops_image": total / 1e3,
            "nfe": nfe, "steps": sampler.steps, "forwards": nfe / sampler.steps, "gflops_branches": branches}


__all__ = ["ATTENTION_OPS", "count_forward", "run_cost"]
