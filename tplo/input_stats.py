"""Statistics of every linear layer's input, accumulated over calibration: the squared norms per input
channel (Wanda, OWL) and, for SparseGPT, the whole Gram matrix X^T X (whose diagonal the norms are)."""

from __future__ import annotations

import torch
from torch import nn


class StopForward(Exception):
    """Raised by a hook once the statistics of a block are complete, to skip the rest of it."""


class InputStats:
    """Accumulates, in fp32, n_j = sum_t X[t, j]^2 (`sq_norms`) or the Gram matrix G = sum_t x_t x_t^T (`grams`,
    with `gram=True`; `sq_norms` is then its diagonal) for each named linear while a block runs.

    Padding tokens are excluded through the `token_mask` [B, T] given to `new_batch`; `tokens` counts the
    rest. Linears that share one input tensor (q/k/v, gate/up) share one reduction and one Gram matrix.
    With `stop_after` (a linear's name), the forward pass is cut short by `StopForward` once that linear's
    input has been seen.
    """

    def __init__(self, linears: dict[str, nn.Module], stop_after: str | None = None, gram: bool = False) -> None:
        self.sq_norms: dict[str, torch.Tensor] = {}
        self.grams: dict[str, torch.Tensor] = {}
        self.tokens: dict[str, int] = {}
        self._gram = gram
        self._shared: dict[int, str] = {}
        self._kept_rows: torch.Tensor | None = None
        self._batch_tokens = 0
        self._last: tuple[torch.Tensor, str] | None = None
        self._handles = [mod.register_forward_pre_hook(self._hook(name)) for name, mod in linears.items()]
        self._stop_after = stop_after

    def _hook(self, name: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            x = args[0]
            if self._last is not None and self._last[0] is x:
                self._share(name, self._last[1])
            else:
                self._accumulate(name, x)
                self._last = (x, name)
            if name == self._stop_after:
                raise StopForward
        return hook

    def _accumulate(self, name: str, x: torch.Tensor) -> None:
        rows = x.detach().reshape(-1, x.shape[-1])
        if self._kept_rows is not None and rows.shape[0] == self._batch_tokens:
            rows = rows.index_select(0, self._kept_rows)
        rows = rows.float()
        self.tokens[name] = self.tokens.get(name, 0) + rows.shape[0]
        if self._gram:
            gram = self.grams.get(name)
            self.grams[name] = rows.T @ rows if gram is None else gram.addmm_(rows.T, rows)
            self.sq_norms[name] = self.grams[name].diagonal()
            return
        sq = (rows * rows).sum(0)
        self.sq_norms[name] = sq if name not in self.sq_norms else self.sq_norms[name].add_(sq)

    def _share(self, name: str, source: str) -> None:
        """`name` reads the same input tensor as `source`: the same statistics, accumulated once."""
        self.sq_norms[name] = self.sq_norms[source]
        self.tokens[name] = self.tokens[source]
        if self._gram:
            self.grams[name] = self.grams[source]

    def new_batch(self, token_mask: torch.Tensor | None) -> None:
        """Declare the padding mask [B, T] of the batch about to run.

        The non-padding rows are found here once per batch, so the hooks never wait on the device.
        """
        self._last = None
        if token_mask is None or bool(token_mask.all()):
            self._kept_rows = None
            return
        self._batch_tokens = token_mask.numel()
        self._kept_rows = token_mask.reshape(-1).nonzero().squeeze(1)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._last = None
