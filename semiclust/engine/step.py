"""One optimiser step: micro-batches, gradient synchronisation, autocast, backward, the non-finite
guard and the update. The only update path: training, tests and benchmarks all step through here."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch

from semiclust.engine import dist
from semiclust.engine.device import autocast
from semiclust.engine.optim import set_lr_and_decay
from semiclust.engine.run import Run


@dataclass
class StepOutcome:
    """The loss parts of a step (averaged over its micro-batches), whether every process's loss was
    finite (the update happened only then), the seconds spent waiting for data, and the method's
    buffers as they were before the step (kept when non-finite steps may be skipped)."""

    parts: dict[str, torch.Tensor]
    finite: bool
    data_seconds: float
    buffers_before: dict[str, torch.Tensor] = field(default_factory=dict)


def gradient_sync(run: Run, last: bool):
    """Gradients are all-reduced once per optimiser step: on the last micro-batch only."""
    return run.runner.no_sync() if run.numbers.world > 1 and not last else contextlib.nullcontext()


def train_step(run: Run, step: int) -> StepOutcome:
    """Scheduled lr and weight decay, then each micro-batch's forward (under autocast) and backward; the
    optimiser step only if the loss was finite on every process (all processes agree, so they stay in step)."""
    schedules = run.schedules
    set_lr_and_decay(run.optimizer, schedules.lr(step), schedules.weight_decay(step), schedules.backbone_scale(step))
    hold_backbone(run, step)
    keep = bool(run.recipe.runtime.skip_nonfinite_steps)  # a skipped step must not leave NaNs in queue, center, BN
    outcome = StepOutcome({}, True, 0.0, {k: v.clone() for k, v in run.method.named_buffers()} if keep else {})
    run.optimizer.zero_grad(set_to_none=True)
    accumulate = run.batches.accumulate
    micro_batches = run.batches.micro_batches(step)
    watch = run.finite_watch
    for micro in range(accumulate):
        started = time.perf_counter()
        batch = next(micro_batches)
        outcome.data_seconds += time.perf_counter() - started
        with gradient_sync(run, last=micro == accumulate - 1):
            with autocast(run.device, run.amp_dtype):
                out = run.method.training_step(batch, step, run.runner)
            if watch is not None:
                watch.note(out.loss, step)  # on the device; the trainer reads it once per log window
            else:
                outcome.finite &= bool(torch.isfinite(out.loss))
            run.scaler.scale(out.loss / accumulate).backward()  # also when non-finite: ranks stay in step
        for key, value in out.parts.items():
            outcome.parts[key] = outcome.parts.get(key, 0) + value / accumulate
    if watch is None:
        outcome.finite = not dist.any_process(not outcome.finite, run.device)
    if outcome.finite:
        optimizer_step(run, step)
    return outcome


def hold_backbone(run: Run, step: int) -> None:
    """During a head warm-up that freezes the backbone, its BatchNorm layers run in eval mode (their statistics
    stay those of the pretrained network); after it, in training mode again."""
    if run.numbers.backbone_warmup_steps and run.method.training:
        run.method.student.backbone.train(not run.schedules.backbone_frozen(step))


def undo_buffers(run: Run, outcome: StepOutcome) -> None:
    """Put the method's buffers back as they were before a skipped step."""
    with torch.no_grad():
        for name, value in run.method.named_buffers():
            value.copy_(outcome.buffers_before[name])
    run.method.buffers_replaced()


def optimizer_step(run: Run, step: int) -> None:
    """Optional clipping, the optimiser step and the method's post-step bookkeeping. The gradient scaler is on only
    under fp16 autocast; off, its calls pass the loss and the step through unchanged (nanoGPT's
    GradScaler(enabled=...))."""
    method, optimizer, scaler = run.method, run.optimizer, run.scaler
    scaler.unscale_(optimizer)
    method.zero_frozen_grads(step)
    if run.schedules.backbone_frozen(step):  # no update at all: not even momentum or weight decay moves it
        for p in method.student.backbone.parameters():
            p.grad = None
    if run.recipe.optim.clip_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(method.trainable_parameters(), run.recipe.optim.clip_grad_norm)
    scaler.step(optimizer)
    scaler.update()
    method.after_optimizer_step(step)
