"""One concise console line per trial event, in place of Tune's wide status table.

    [  41s] trial t00 started: lr=0.001 lr_multiplier=10 lambda1=0.25 ...
    [  93s] trial t00 epoch 1/3: target_acc 83.40 (last 83.40) stored_params 451,210
    [ 160s] trial t00 complete: target_acc 91.35 stored_params 431,101 [1/6 finished]

Trials are named by their Optuna number, as the front, MLflow and optuna-dashboard name them
(vlpuda.naming).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from optuna.trial import TrialState
from ray.tune import Callback

from vlpuda.naming import TrialNumbers, trial_label
from vlpuda.objectives import METRICS, trial_outcome
from vlpuda.search.moasha import stop_reason


def short_id(trial: Any) -> str:
    """The trial's index part of Tune's id ("a1b2c3d4_00003" -> "00003"), unique in a run."""
    return str(trial.trial_id).rsplit("_", 1)[-1]


def format_params(config: dict[str, Any], names: tuple[str, ...]) -> str:
    parts = []
    for name in names:
        value = config.get(name)
        parts.append(f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}")
    return " ".join(parts)


class ProgressLines(Callback):
    """Prints trial starts, every epoch's objectives, and how each trial ended.

    Args:
        searched: the names of the searched parameters, shown when a trial starts.
        epochs: the full length of a trial.
        num_samples: trials planned in this run.
        budget: the stored-parameter budget, if any (to say why a trial was stopped).
        scheduler: the search's scheduler; its stop_log (MOASHA, ASHA) says at which rung.
        numbers: where trial numbers are read (the study); None names trials by Tune's id.
        metrics: the result keys of the search's two objectives.
    """

    def __init__(self, searched: tuple[str, ...], epochs: int, num_samples: int,
                 budget: int | None = None, scheduler: Any = None,
                 numbers: TrialNumbers | None = None,
                 metrics: tuple[str, ...] = METRICS) -> None:
        self.searched, self.epochs, self.num_samples, self.budget = (
            searched, epochs, num_samples, budget)
        self.scheduler = scheduler
        self.numbers = numbers
        self.metrics = tuple(metrics)
        self.started = time.monotonic()

    def _name(self, trial: Any) -> str:
        number = self.numbers.number(str(trial.trial_id)) if self.numbers else None
        return trial_label(number) if number is not None else short_id(trial)

    def setup(self, **info: Any) -> None:
        # Also runs after a restore: the clock restarts with the resumed run.
        self.started = time.monotonic()

    def _print(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:5.0f}s] {message}", file=sys.stdout, flush=True)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        name, tune_id = self._name(trial), short_id(trial)
        # Tune's id too, once: Tune's and Train's folders are named by it (train-trial_id=...).
        also = f" (Tune trial {tune_id})" if name != tune_id else ""
        self._print(f"trial {name} started{also}: {format_params(trial.config, self.searched)}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        first = self.metrics[0]
        if first not in result:
            return
        # The true accuracy only where the target has labels: absent, never shown as 0.
        last = (f" (target_acc_last {result['target_acc_last']:.2f})"
                if "target_acc_last" in result else "")
        self._print(
            f"trial {self._name(trial)} epoch {result.get('epoch', '?')}/{self.epochs}: "
            f"{first} {result[first]:.4g}{last} stored_params {int(result['stored_params']):,}"
        )

    def _finish(self, trials: list, trial: Any, error: bool) -> None:
        # Counted from Tune's trial list, so the count stays right after a restore.
        done = {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}
        done.add(trial.trial_id)
        result = trial.last_result or {}
        state, reason = trial_outcome(result, error, self.epochs, self.budget, self.metrics)
        if state == TrialState.COMPLETE:
            what = (f"complete: {self.metrics[0]} {result[self.metrics[0]]:.4g} "
                    f"stored_params {int(result['stored_params']):,}")
            if result.get("ladder_share") is not None:  # its sparsity ladder's cost
                what += (f"; sparsity ladder {result.get('ladder_seconds', 0):.1f} s, "
                         f"{100 * result['ladder_share']:.1f} % of the trial")
        elif reason == "early_stopping":
            entry = getattr(self.scheduler, "stop_log", {}).get(trial.trial_id)
            what = (f"stopped early after epoch {result.get('epoch')}/{self.epochs}"
                    f"{': ' + detail if (detail := stop_reason(entry)) else ''} (pruned)")
        elif reason == "stored_params_budget":
            what = (f"stopped: {int(result['stored_params']):,} stored parameters exceed the "
                    f"budget of {self.budget:,} (pruned)")
        else:
            what = f"failed ({reason}); see {getattr(trial, 'path', None) or 'the trial log'}"
        self._print(f"trial {self._name(trial)} {what} "
                    f"[{len(done)}/{self.num_samples} finished]")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trials, trial, error=False)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trials, trial, error=True)
