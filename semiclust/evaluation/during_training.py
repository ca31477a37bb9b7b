"""Evaluation during and at the end of training: the classifier on the test split, the networks reported
beside it (the online network and its weight average), the validation split of `data.validation`, and the
checkpoint of the best validation top-1 (checkpoints/best.pt). Only the validation split chooses anything;
the test split is reported, never used to choose."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from semiclust.data.streams import Stream
from semiclust.engine.checkpoint import load_checkpoint
from semiclust.engine.reporter import Reporter
from semiclust.engine.run import Run
from semiclust.evaluation.metrics import EvalResult, evaluate, evaluate_with_confusion


@dataclass
class RunEvaluation:
    """One evaluation: the classifier's test result and confusion matrix, the test top-1 of the networks
    beside it, and the classifier's validation result (each None or empty when there is nothing to measure)."""

    result: EvalResult | None = None
    confusion: torch.Tensor | None = None
    beside: dict[str, EvalResult] = field(default_factory=dict)
    validation: EvalResult | None = None

    def figures(self) -> dict[str, float]:
        """What the metrics record holds beside the classifier's own result."""
        out = {f"{name}_top1": r.top1 for name, r in self.beside.items()}
        if self.validation is not None:
            out.update(validation_top1=self.validation.top1, validation_top5=self.validation.top5)
        return out

    def line(self) -> str:
        """The figures beside the test top-1, as the progress line shows them."""
        parts = [f"{name} top-1 {r.top1:.2f}%" for name, r in self.beside.items()]
        if self.validation is not None:
            parts.append(f"validation top-1 {self.validation.top1:.2f}%")
        return f" ({'; '.join(parts)})" if parts else ""


def evaluate_run(run: Run, step: int, reporter: Reporter) -> RunEvaluation:
    """Every evaluation of `run` at `step`, recorded as one metrics record (nothing without evaluation splits)."""
    matched = Stream.LABELED not in run.method.streams
    evaluation = RunEvaluation()
    if run.eval_views is not None:
        split = run.dataset.test_split_name
        evaluation.result, evaluation.confusion = evaluate_with_confusion(run.method.classifier, run.eval_views, split,
                                                                          match=matched)
        evaluation.beside = {name: evaluate(network, run.eval_views, split, match=matched)
                             for name, network in run.method.beside().items()}
    if run.validation_views is not None:
        evaluation.validation = evaluate(run.method.classifier, run.validation_views, "validation", match=matched)
    if evaluation.result is not None or evaluation.validation is not None:
        reporter.evaluated(step, evaluation.result or evaluation.validation, evaluation.figures())
    return evaluation


@dataclass
class BestSoFar:
    """The best validation top-1 seen and its step (the earliest of equal ones), from best.pt on resume."""

    top1: float = float("-inf")
    step: int | None = None
    test: EvalResult | None = None

    @classmethod
    def of(cls, path: Path, resume: bool) -> "BestSoFar":
        if not (resume and path.is_file()):
            return cls()
        best = load_checkpoint(path)
        test = EvalResult(**best.eval) if best.eval is not None else None
        return cls(EvalResult(**best.validation).top1, best.step, test)

    def improved_by(self, evaluation: RunEvaluation, step: int) -> bool:
        """Whether this evaluation is a new best (strictly better validation top-1); remembers it if so."""
        if evaluation.validation is None or evaluation.validation.top1 <= self.top1:
            return False
        self.top1, self.step, self.test = evaluation.validation.top1, step, evaluation.result
        return True
