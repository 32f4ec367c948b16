"""Run configuration: YAML presets plus `key=value` overrides, validated into one typed object.

Names here are a contract: the same flat keys appear in presets, search spaces, Tune configs and
MLflow params (docs/metrics.md#conventions). A bad config fails before anything heavy starts,
with one ConfigError that lists every problem with its key.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vlpuda.errors import ConfigError, validation_problems
from vlpuda.objectives import DEFAULT_LABEL_FREE, ORACLE, selection_problems

# Sections of a preset file that belong to later stages (the search driver, tracking) and are
# validated there; everything else is a training key.
SECTIONS = ("search", "tracking")
DEMO_MODEL = "demo-teacher"


class TrainConfig(BaseModel):
    """Everything one training run needs. Defaults are the paper's Office-Home ViT-B/16 setting."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # data
    benchmark: str = "custom"
    data_dir: str | None = None  # DATA_DIR/<Domain>/<class>/... or the root the image lists use
    domains: list[str] = Field(default_factory=list)  # the benchmark's domain names, if known
    image_lists: dict[str, str] = Field(default_factory=dict)  # domain -> "path label" list file
    classes: list[str] | None = None  # class names for image lists whose folders don't say
    src: str | None = None
    tgt: str | None = None
    prompt_template: str = "a photo of a {}"
    train_resize: int = Field(256, gt=0)  # squash to S x S (aspect not kept), then random crop
    image_size: int = Field(224, gt=0)  # crop size in training, squash size at test
    pad: int = Field(0, ge=0)  # zero padding before the random crop (digits: small shifts)
    # Area fractions of a RandomResizedCrop instead of the plain random crop (digits: [0.75, 1.2])
    train_crop_scale: tuple[float, float] | None = None
    hflip: bool = True
    image_cache_dir: str | None = None  # decoded-image cache; default: the vlpuda cache dir
    pda: bool = False  # partial-set: the target's classes are a subset of the source's (by name)
    # pda: from epoch 2 the Gini terms see only classes predicted this often on the target (the
    # reference's 14, set for Office-Home's ~4k-image targets;
    # docs/method.md#d9-partial-set-adaptation)
    pda_min_predictions: int = Field(14, ge=1)
    # UDA without target labels: tgt is a folder of images (any depth) or a path-only image list;
    # classes come from the source (or `classes:`). Label metrics are then absent.
    unlabeled_target: bool = False
    target_holdout_list: str | None = None  # labelled target list, measurement only
    source_holdout: float = Field(0.0, ge=0, lt=1)  # held-out source share: proxy_source_acc
    selection: str | None = None  # which epoch's delta a run keeps; None: target_acc / label-free

    # model
    model: str = "ViT-B-16"
    pretrained: str | None = "openai"
    cache_dir: str | None = None  # open_clip / Hugging Face cache
    zs_scale: float | None = Field(None, gt=0)  # None: the model's exp(logit_scale), 100 for CLIP

    # optimisation (docs/method.md#optimisation-and-schedule)
    lr: float = Field(3e-6, gt=0)
    lr_multiplier: float = Field(1000.0, gt=0)  # head lr = lr * lr_multiplier
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    lr_gamma: float = Field(3e-4, ge=0)
    lr_decay: float = Field(0.75, ge=0)
    batch_size: int = Field(32, gt=0)  # labelled source images per step (per worker)
    target_batch_size: int = Field(32, gt=0)  # unlabelled target images per step (per worker)
    iters_per_epoch: int = Field(500, gt=0)
    epochs: int = Field(20, gt=0)
    eval_batch_size: int = Field(256, gt=0)
    seed: int = 42
    precision: Literal["fp32", "amp_bf16", "amp_fp16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    channels_last: bool | None = None  # None: on for ResNet towers on a GPU (faster convolutions)
    compile: bool = False  # torch.compile the training forward (first steps pay the compile)

    # CMKD (docs/method.md#cmkd-terms-and-lambda-weights)
    baseline: bool = False  # source-only fine-tuning: no transfer terms
    lambda1: float = Field(0.25, ge=0)
    lambda2: float = Field(0.1, ge=0)
    lambda3: float = Field(0.025, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    ramp_gamma: float = Field(1.0, gt=0)
    ramp_horizon: int = Field(10_000, gt=0)

    # RST (docs/method.md#residual-sparse-training-rst)
    rst: bool = False
    rst_mode: Literal["threshold", "ratio"] = "threshold"
    rst_threshold: float = Field(1e-6, ge=0)
    rst_ratio: float = Field(0.003, gt=0, le=1)

    # FixMatch (docs/method.md#fixmatch-terms)
    fixmatch: bool = False
    fixmatch_threshold: float = Field(0.95, gt=0, lt=1)
    fixmatch_factor: float = Field(0.5, ge=0)

    out_dir: str = "runs/train"

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        problems = consistency_problems(self.model_dump())
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def selection_effective(self) -> str:
        """The selection metric: as set, else the oracle, or the default label-free validator
        for an unlabeled target."""
        if self.selection is not None:
            return self.selection
        return DEFAULT_LABEL_FREE if self.unlabeled_target else ORACLE

    @property
    def rst_mode_effective(self) -> str:
        return self.rst_mode if self.rst else "off"


def consistency_problems(values: dict[str, Any]) -> list[str]:
    """Checks across keys. Runs on raw values too (type errors elsewhere must not hide these),
    so each check tolerates a value of the wrong type by skipping itself."""
    problems = []

    def get(key: str) -> Any:
        if key in values:
            return values[key]
        return TrainConfig.model_fields[key].get_default(call_default_factory=True)

    template = get("prompt_template")
    if isinstance(template, str) and "{}" not in template:
        problems.append("prompt_template: must contain '{}' where the class name goes")
    try:
        if int(get("image_size")) > int(get("train_resize")) + 2 * int(get("pad")):
            problems.append(
                f"image_size: {get('image_size')} exceeds train_resize + 2*pad; "
                "the random crop would not fit"
            )
    except (TypeError, ValueError):
        pass
    src, tgt, domains = get("src"), get("tgt"), get("domains")
    if src is not None and src == tgt:
        problems.append(f"tgt: equals src ({src!r}); adaptation needs two domains")
    for key, value in (("src", src), ("tgt", tgt)):
        if value is not None and isinstance(domains, list) and domains and value not in domains:
            problems.append(f"{key}: {value!r} is not one of the domains {domains}")
    scale = get("train_crop_scale")
    if isinstance(scale, (list, tuple)) and len(scale) == 2 and all(
            isinstance(v, (int, float)) for v in scale) and not 0 < scale[0] <= scale[1]:
        problems.append(f"train_crop_scale: {list(scale)} must be [low, high] with "
                        "0 < low <= high")
    if get("baseline") is True and get("fixmatch") is True:
        problems.append("fixmatch: source-only training (baseline) has no target terms")
    selection, holdout = get("selection"), get("source_holdout")
    if isinstance(selection, str) and isinstance(holdout, (int, float)):
        problems += selection_problems("selection", selection,
                                       unlabeled=get("unlabeled_target") is True,
                                       holdout=get("target_holdout_list") is not None,
                                       source_holdout=float(holdout))
    return problems


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, TrainConfig.model_fields, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _format_errors(err: ValidationError) -> list[str]:
    return validation_problems(err.errors(), unknown=lambda key: f"unknown key{_suggest(key)}")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key=value` strings to a dict; values are parsed as YAML scalars (3e-7, true, [a, b])."""
    overrides: dict[str, Any] = {}
    problems = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            problems.append(f"{item!r}: overrides are written key=value")
            continue
        overrides[key.strip()] = yaml.safe_load(value) if value else None
    if problems:
        raise ConfigError(problems, "overrides")
    return overrides


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A preset as a dict; a missing or malformed file is a ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"config file {path} does not exist (presets live in configs/)"])
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError([f"{path}: not valid YAML ({err})"]) from err
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of key: value"])
    return data


def build_config(
    raw: dict[str, Any], overrides: dict[str, Any] | None = None, source: str | None = None
) -> tuple[TrainConfig, dict[str, Any]]:
    """Validate a preset dict plus overrides. Returns the training config and the other sections."""
    merged = {**raw, **(overrides or {})}
    sections = {name: merged.pop(name) for name in SECTIONS if name in merged}
    try:
        cfg = TrainConfig(**merged)
    except ValidationError as err:
        problems = _format_errors(err)
        # Field errors stop pydantic before the cross-key checks: run those too, so the user
        # sees every problem at once.
        problems += [p for p in consistency_problems(merged) if p not in problems]
        raise ConfigError(problems, source) from None
    return cfg, sections


def load_config(
    path: str | Path | None, overrides: dict[str, Any] | None = None
) -> tuple[TrainConfig, dict[str, Any]]:
    raw = read_yaml(path) if path is not None else {}
    return build_config(raw, overrides, str(path) if path else None)


def path_problems(cfg: TrainConfig, *, need_domains: bool = True) -> list[str]:
    """Filesystem checks, kept apart from type checks so `validate` can report both at once."""
    if cfg.benchmark == "demo" and cfg.data_dir is None:
        return []  # the demo builds its own data on first use
    problems = []
    if need_domains and (cfg.src is None or cfg.tgt is None):
        problems.append("src/tgt: both domains are required (--src Art --tgt Clipart)")
    # Presets with image lists want the lists' root, not an ImageFolder tree.
    layout = (f"DIR holding the image lists ({', '.join(sorted(cfg.image_lists.values()))}) and "
              "the images they list" if cfg.image_lists else "DIR/<Domain>/<class>/<image>")
    if cfg.data_dir is None:
        return problems + [f"data_dir: not set; pass --data-dir DIR ({layout})"]
    root = Path(cfg.data_dir).expanduser()
    if not root.is_dir():
        return problems + [f"data_dir: {root} is not a directory; pass --data-dir DIR ({layout})"]
    for key in ("src", "tgt"):
        domain = getattr(cfg, key)
        if domain is None:
            continue
        if domain in cfg.image_lists:
            listed = root / cfg.image_lists[domain]
            if not listed.is_file():
                problems.append(f"image_lists.{domain}: {listed} does not exist")
        elif cfg.image_lists and not (root / domain).is_dir():
            problems.append(f"{key}: {domain!r} has no image list; this preset's domains are "
                            f"{', '.join(sorted(cfg.image_lists))} (image_lists)")
        elif not (root / domain).is_dir():
            found = sorted(p.name for p in root.iterdir() if p.is_dir())
            problems.append(f"{key}: no folder {root / domain} (found: {found})")
    if cfg.target_holdout_list is not None and not (root / cfg.target_holdout_list).is_file():
        problems.append(f"target_holdout_list: {root / cfg.target_holdout_list} does not exist")
    return problems
