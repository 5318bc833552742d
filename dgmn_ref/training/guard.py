"""Never save a non-finite run: the loss of every step, the gradients and the weights.

:class:`NonFiniteGuard` marks the first iteration whose loss is NaN or infinite on the
device (no host synchronisation per step); :meth:`NonFiniteGuard.check`, called where the
loop synchronises anyway (log and checkpoint steps), also looks at the gradients and the
weights and raises :class:`NonFiniteError` saying what went non-finite, at which
iteration, and which checkpoint is the last good one. The loop calls it before it logs or
saves, so a non-finite state never replaces a finite checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from dgmn_ref.training.integrity import nonfinite_tensors

__all__ = ["NonFiniteError", "NonFiniteGuard"]


class NonFiniteError(FloatingPointError):
    """Training produced NaN or infinity; nothing non-finite was saved."""


def _names(names: list[str], limit: int = 3) -> str:
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


class NonFiniteGuard:
    """Watches a run for NaN / infinity; see the module docstring.

    Args:
        device: where the losses live.
        world_size: processes whose first bad iteration is combined (all-reduce max).
        check_gradients: False under fp16 loss scaling, whose scaler skips the steps with
            infinite gradients on purpose.
    """

    def __init__(self, device: torch.device, world_size: int = 1, check_gradients: bool = True):
        self.first_bad = torch.zeros((), dtype=torch.int64, device=device)  # 0: none yet
        self.world_size = world_size
        self.check_gradients = check_gradients

    def observe(self, loss: torch.Tensor, iteration: int) -> None:
        """Remember ``iteration`` if ``loss`` is non-finite and no earlier one was."""
        bad = ~torch.isfinite(loss) & (self.first_bad == 0)
        self.first_bad = torch.where(bad, iteration, self.first_bad)

    def check(self, model: nn.Module, iteration: int, last_good: tuple[Path, int] | None) -> None:
        """Raise :class:`NonFiniteError` if a loss, gradient or weight is non-finite.

        Args:
            model: the unwrapped model (its parameters, gradients and buffers).
            iteration: the iteration just done.
            last_good: ``(file, iteration)`` of the last good checkpoint, None if none yet.
        """
        first = self.first_bad.clone()
        if self.world_size > 1:
            dist.all_reduce(first, op=dist.ReduceOp.MAX)
        problems = []
        if int(first):
            problems.append(f"the loss at iteration {int(first)}")
        if self.check_gradients:
            grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
            bad = nonfinite_tensors(grads)
            if bad:
                problems.append(f"the gradients of {_names(bad)}")
        bad = nonfinite_tensors(model.state_dict())
        if bad:
            problems.append(f"the weights {_names(bad)}")
        if not problems:
            return
        kept = "no checkpoint had been saved yet"
        if last_good is not None:
            kept = f"the last good checkpoint, {last_good[0]} (iteration {last_good[1]}), is intact"
        raise NonFiniteError(
            f"training stopped at iteration {iteration}: NaN or infinity in "
            f"{'; '.join(problems)}. Nothing non-finite was saved: {kept}. Lower the "
            "learning rate and start again (--overwrite)"
        )
