"""The named search spaces and their default bounds (docs/method.md#search-space-bounds).

Six spaces, one per method variant: RST off / threshold / ratio, each with or without FixMatch.
Every space searches the CMKD core (learning rates, the three loss weights, label smoothing) and
adds the variant's own parameters:

    cmkd                      CMKD only, dense fine-tuning
    cmkd_fixmatch             + fixmatch_threshold, fixmatch_factor
    cmkd_rst                  + rst_threshold_over_lr  (the paper's RST: tau = ratio * lr)
    cmkd_rst_fixmatch         + rst_threshold_over_lr, fixmatch_threshold, fixmatch_factor
    cmkd_rst_ratio            + rst_ratio              (keep the largest changes up to a fraction)
    cmkd_rst_ratio_fixmatch   + rst_ratio, fixmatch_threshold, fixmatch_factor
"""

from __future__ import annotations

from vlpuda.spaces.dimension import Dimension, float_dimension
from vlpuda.spaces.space import SearchSpace

# Paper lrs: 3e-9 (VisDA RN101) to 3e-6 (ViT); 3e-4 collapses training. A decade past each end.
LR = float_dimension("lr", 1e-9, 1e-5, log=True)
# 1e4 (ResNet) and 1e3 (ViT): what matters is a head lr near 3e-3, so a decade below the ViT value.
LR_MULTIPLIER = float_dimension("lr_multiplier", 1e2, 1e4, log=True)
# 0.25 by default, 0.025 on DomainNet, ablations at 0.05 and 0.5: spread over a decade and more.
LAMBDA1 = float_dimension("lambda1", 0.02, 0.5, log=True)
# 0 is a real setting (Office-31 in the appendix), and a log scale cannot reach 0: uniform.
LAMBDA2 = float_dimension("lambda2", 0.0, 0.3)
LAMBDA3 = float_dimension("lambda3", 0.0, 0.05)
LABEL_SMOOTHING = float_dimension("label_smoothing", 0.0, 0.2)
# tau / lr. Paper settings give 1e-6/3e-6 = 0.33 (ViT), 1e-6/3e-7 = 3.3 (RN50), and the same two
# values on VisDA; the Fig. 4 sweep (tau 1e-7..1e-5) spans 0.033..3.3 on ViT and 0.33..33 on RN50.
# At 0.033 (ViT, tau 1e-7) about 17 % of the weights change, nearly dense; at 33 (RN50, tau 1e-5)
# accuracy is within 0.5 points of a linear probe, nearly nothing changes. 1e-2..1e2 covers every
# paper setting with a factor of ~3 to spare at each end, i.e. both ends of the front.
RST_THRESHOLD_OVER_LR = float_dimension("rst_threshold_over_lr", 1e-2, 1e2, log=True)
# The paper's models keep 0.1-0.5 % of the visual weights changed: a decade either side of that.
RST_RATIO = float_dimension("rst_ratio", 1e-4, 1e-1, log=True)
# 0.95 by default, 0.80 on VisDA.
FIXMATCH_THRESHOLD = float_dimension("fixmatch_threshold", 0.7, 0.97)
# 0.5 by default, 2.0 on VisDA, 0.1 on DomainNet.
FIXMATCH_FACTOR = float_dimension("fixmatch_factor", 0.1, 2.0, log=True)

CMKD_DIMENSIONS = (LR, LR_MULTIPLIER, LAMBDA1, LAMBDA2, LAMBDA3, LABEL_SMOOTHING)
FIXMATCH_DIMENSIONS = (FIXMATCH_THRESHOLD, FIXMATCH_FACTOR)
RST_DIMENSIONS = {"off": (), "threshold": (RST_THRESHOLD_OVER_LR,), "ratio": (RST_RATIO,)}
RST_SUFFIX = {"off": "", "threshold": "_rst", "ratio": "_rst_ratio"}

# Every dimension any space searches, by name: the defaults an override starts from.
DEFAULT_DIMENSIONS: dict[str, Dimension] = {
    d.name: d
    for d in (*CMKD_DIMENSIONS, RST_THRESHOLD_OVER_LR, RST_RATIO, *FIXMATCH_DIMENSIONS)
}


def make_space(rst_mode: str, fixmatch: bool) -> SearchSpace:
    """The space for one method variant, named cmkd[_rst|_rst_ratio][_fixmatch].

    Args:
        rst_mode: "off", "threshold" or "ratio".
        fixmatch: whether FixMatch is on.

    Returns:
        The space with its default bounds and the constants that switch the variant on.
    """
    name = f"cmkd{RST_SUFFIX[rst_mode]}{'_fixmatch' if fixmatch else ''}"
    dimensions = (
        *CMKD_DIMENSIONS,
        *RST_DIMENSIONS[rst_mode],
        *(FIXMATCH_DIMENSIONS if fixmatch else ()),
    )
    # In the trainer's vocabulary: the dense variant is rst=False (its rst_mode is then unused).
    constants = {"rst": rst_mode != "off", "fixmatch": fixmatch}
    if rst_mode != "off":
        constants["rst_mode"] = rst_mode
    return SearchSpace(name, dimensions, constants)


SPACES: dict[str, SearchSpace] = {
    space.name: space
    for space in (make_space(mode, fixmatch) for mode in RST_SUFFIX for fixmatch in (False, True))
}
