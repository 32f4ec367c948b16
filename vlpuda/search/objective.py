"""A search's first objective (`search.objective`) and its tasks' kinds of target.

The objective defaults to the oracle target_acc, or to the default label-free validator when a
target is unlabeled (vlpuda.objectives); it must be scorable on every task, which is checked
before anything is built so the message names `search.objective`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from vlpuda.config import TrainConfig
from vlpuda.objectives import DEFAULT_LABEL_FREE, ORACLE, selection_problems

SEARCH_KEY = "search"


class SearchTask(BaseModel):
    """One entry of search.tasks written as a mapping, for a task with its own target kind."""

    model_config = ConfigDict(extra="forbid")

    src: str
    tgt: str
    unlabeled_target: bool | None = None
    target_holdout_list: str | None = None

    def overrides(self) -> dict[str, Any]:
        extra = {"unlabeled_target": self.unlabeled_target,
                 "target_holdout_list": self.target_holdout_list}
        return {"src": self.src, "tgt": self.tgt,
                **{key: value for key, value in extra.items() if value is not None}}


def task_entries(settings) -> list[dict[str, Any]]:
    return [entry.overrides() if isinstance(entry, SearchTask)
            else {"src": entry[0], "tgt": entry[1]} for entry in settings.tasks or []]


def search_objective(cfg: TrainConfig, settings) -> str:
    """search.objective, else the preset's `selection` (VisDA's class mean), else the oracle, or
    the default validator if a target is unlabeled."""
    if settings.objective is not None:
        return settings.objective
    if cfg.selection is not None:
        return cfg.selection
    unlabeled = [e.get("unlabeled_target", cfg.unlabeled_target) for e in task_entries(settings)]
    return DEFAULT_LABEL_FREE if any(unlabeled or [cfg.unlabeled_target]) else ORACLE


def objective_problems(cfg: TrainConfig, settings, objective: str
                        ) -> list[str]:
    """search.objective must be scorable on every task (target_acc needs target labels)."""
    problems = []
    for entry in task_entries(settings) or [{}]:
        task = {**cfg.model_dump(), **entry}
        problems += selection_problems(f"{SEARCH_KEY}.objective", objective,
                                       unlabeled=bool(task["unlabeled_target"]),
                                       holdout=task["target_holdout_list"] is not None,
                                       source_holdout=task["source_holdout"])
    return list(dict.fromkeys(problems))
