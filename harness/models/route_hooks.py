"""TREAD routing inside unmodified diffusers transformers, by forward hooks on their transformer blocks.

Before block `first` a pre-hook keeps each image's selected image tokens (gather); after block `last` a forward hook
puts the blocks' outputs back at those positions and the routed tokens re-enter with their values from before block
`first` (scatter). Blocks in between see the shorter sequence as their input. Text tokens are never routed: PixArt's
blocks take them as cross-attention keys, SD3's joint blocks as a separate stream (`encoder_hidden_states`), and
neither is touched. Everything else a block gets is per image (timestep modulation) or per text token, so nothing else
needs gathering, as long as no self-attention mask over image tokens, ControlNet residual or IP-adapter input is
passed (pipelines pass none of these by default; a self-attention mask is refused).

`BLOCK_TOKENS` says where a block class takes and returns its image tokens; a diffusers transformer whose blocks are
listed there and carry no per-token side inputs (no RoPE tables: Flux would need its image rows gathered too) fits.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.models.tokens import gather_tokens


@dataclass(frozen=True)
class BlockTokens:
    """Where a block takes its image tokens (keyword `argument`, else the first positional argument) and returns
    them (`output_index` into its returned tuple; None: it returns the tensor itself)."""

    argument: str = "hidden_states"
    output_index: int | None = None


# diffusers block class name -> where its image tokens are (diffusers' hooks/_helpers.py has the same facts).
BLOCK_TOKENS: dict[str, BlockTokens] = {
    "BasicTransformerBlock": BlockTokens(),  # PixArt-alpha / -Sigma: returns hidden_states
    "JointTransformerBlock": BlockTokens(output_index=1),  # SD3 / SD3.5 MMDiT: returns (encoder_hidden_states, hs)
}


class TokenRouter:
    """Routes image tokens around `blocks[first..last]` (inclusive) while `routing(ids)` is active; a no-op else.

    The hooks stay registered; outside `routing` they return None, so the forward is exactly the unhooked one.
    """

    def __init__(self, blocks: nn.ModuleList, first: int, last: int):
        if not 0 <= first <= last < len(blocks):
            raise ValueError(f"route [{first}, {last}] lies outside blocks 0..{len(blocks) - 1}")
        kinds = {type(blocks[i]).__name__ for i in (first, last)}
        unknown = kinds - set(BLOCK_TOKENS)
        if unknown:
            raise ValueError(f"no routing hook for block class(es) {sorted(unknown)}; known: {sorted(BLOCK_TOKENS)}")
        self.first, self.last = first, last
        self._entry = BLOCK_TOKENS[type(blocks[first]).__name__]
        self._exit = BLOCK_TOKENS[type(blocks[last]).__name__]
        self._ids: torch.Tensor | None = None
        self._saved: torch.Tensor | None = None
        self.handles = [blocks[first].register_forward_pre_hook(self._gather, with_kwargs=True),
                        blocks[last].register_forward_hook(self._scatter, with_kwargs=True)]

    @contextmanager
    def routing(self, ids: torch.Tensor | None) -> Iterator[None]:
        """Route with kept-token indices `ids` (B, N_keep) for the forwards inside; None routes nothing."""
        self._ids = ids
        try:
            yield
        finally:
            self._ids = self._saved = None

    def _gather(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict] | None:
        if self._ids is None:
            return None
        if kwargs.get("attention_mask") is not None:
            raise ValueError("routing cannot gather a self-attention mask over image tokens; pass none")
        name = self._entry.argument
        x = kwargs[name] if name in kwargs else args[0]
        self._saved = x
        kept = gather_tokens(x, self._ids.to(x.device))  # (B, N_keep, D)
        if name in kwargs:
            return args, {**kwargs, name: kept}
        return (kept, *args[1:]), kwargs

    def _scatter(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
        if self._ids is None:
            return None
        index = self._exit.output_index
        y = output if index is None else output[index]
        ids = self._ids.to(y.device).unsqueeze(-1).expand(-1, -1, y.shape[-1])
        full = self._saved.to(y.dtype).scatter(1, ids, y)  # routed tokens re-enter as they were before `first`
        self._saved = None
        if index is None:
            return full
        return (*output[:index], full, *output[index + 1:])

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


__all__ = ["BLOCK_TOKENS", "BlockTokens", "TokenRouter"]
