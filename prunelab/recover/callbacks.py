"""Trainer callbacks of the recovery: a NaN guard and a progress bar.

The guard snapshots the trainable weights before every optimizer step and stops training at the first non-finite
loss or weight, so the weights can be restored to the last step whose loss was finite. ``transformers`` is
imported inside the factories: importing :mod:`prunelab.recover` stays light.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["nan_guard", "progress_bar", "trainable_parameters"]


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters the optimizer updates (``requires_grad``), by name."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def nan_guard(model: nn.Module):
    """A TrainerCallback that snapshots trainable weights and stops at the first non-finite loss/weight."""
    from transformers import TrainerCallback

    class NanGuard(TrainerCallback):
        def __init__(self) -> None:
            self.params = trainable_parameters(model)
            self.pending: dict[str, torch.Tensor] | None = None
            self.last_good: dict[str, torch.Tensor] | None = None
            self.last_good_step = -1
            self.bad_step: int | None = None
            self.bad_what = ""

        def _snapshot(self) -> dict[str, torch.Tensor]:
            return {n: p.detach().to("cpu", copy=True) for n, p in self.params.items()}

        def on_train_begin(self, args, state, control, **kw):
            self.pending = self._snapshot()

        def on_step_begin(self, args, state, control, **kw):
            # the loss logged after this step is computed with these weights
            self.pending = self._snapshot()

        def on_step_end(self, args, state, control, **kw):
            if not all(torch.isfinite(p).all() for p in self.params.values()):
                self._stop(state, control, "a trainable weight")

        def on_log(self, args, state, control, logs=None, **kw):
            if not logs or "loss" not in logs:
                return
            if math.isfinite(float(logs["loss"])):
                if self.bad_step is None:
                    self.last_good, self.last_good_step = self.pending, state.global_step - 1
            else:
                self._stop(state, control, "the training loss")

        def _stop(self, state, control, what: str) -> None:
            if self.bad_step is None:
                self.bad_step, self.bad_what = state.global_step, what
            control.should_training_stop = True

        def restore(self) -> None:
            good = self.last_good if self.last_good is not None else None
            if good is None:
                return
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(good[n].to(p.device))

    return NanGuard()


def progress_bar(total_steps: int, description: str):
    """A TrainerCallback drawing a transient rich bar (steps done, last loss, time left) on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from transformers import TrainerCallback

    from prunelab.console import err_console

    class RichProgress(TrainerCallback):
        def __init__(self) -> None:
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn(),
                                     console=err_console, transient=True)
            self.task = None

        def on_train_begin(self, args, state, control, **kw):
            self.progress.start()
            self.task = self.progress.add_task(description, total=state.max_steps or total_steps, loss="-")

        def on_step_end(self, args, state, control, **kw):
            self.progress.update(self.task, completed=state.global_step)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.progress.update(self.task, loss=f"{float(logs['loss']):.4f}")

        def on_train_end(self, args, state, control, **kw):
            self.progress.stop()

    return RichProgress()
