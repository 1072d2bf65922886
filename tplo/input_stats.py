"""Per-input-channel squared norms of every linear layer's input, accumulated over calibration."""

from __future__ import annotations

import torch
from torch import nn


class StopForward(Exception):
    """Raised by a hook once the statistics of a block are complete, to skip the rest of it."""


class InputNorms:
    """Accumulates n_j = sum_t X[t, j]^2 in fp32 for each named linear while a block runs.

    Padding tokens are excluded through the `token_mask` [B, T] given to `new_batch`. Linears that
    share one input tensor (q/k/v, gate/up) reuse one reduction. With `stop_after` (a linear's name),
    the forward pass is cut short by `StopForward` once that linear's input has been seen.
    """

    def __init__(self, linears: dict[str, nn.Module], stop_after: str | None = None) -> None:
        self.sq_norms: dict[str, torch.Tensor] = {}
        self.order: list[str] = []
        self._tokens = 0
        self._kept_rows: torch.Tensor | None = None
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None
        self._handles = [mod.register_forward_pre_hook(self._hook(name)) for name, mod in linears.items()]
        self._stop_after = stop_after

    def _hook(self, name: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            x = args[0]
            if self._last is not None and self._last[0] is x:
                sq = self._last[1]
            else:
                sq = self._reduce(x)
                self._last = (x, sq)
            if name not in self.sq_norms:
                self.order.append(name)
                self.sq_norms[name] = torch.zeros_like(sq)
            self.sq_norms[name] += sq
            if name == self._stop_after:
                raise StopForward
        return hook

    def _reduce(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.detach().reshape(-1, x.shape[-1])
        if self._kept_rows is not None and rows.shape[0] == self._tokens:
            rows = rows.index_select(0, self._kept_rows)
        rows = rows.float()
        return (rows * rows).sum(0)

    def new_batch(self, token_mask: torch.Tensor | None) -> None:
        """Declare the padding mask [B, T] of the batch about to run.

        The non-padding rows are found here once per batch, so the hooks never wait on the device.
        """
        self._last = None
        if token_mask is None or bool(token_mask.all()):
            self._kept_rows = None
            return
        self._tokens = token_mask.numel()
        self._kept_rows = token_mask.reshape(-1).nonzero().squeeze(1)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._last = None
