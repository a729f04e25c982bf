"""Tests of unfoldmem.unfold.omnifold_config: defaults and validation of the OmniFold card section.

Independent reference: the documented defaults of :class:`OmniFoldConfig` (docs/omnifold.md)
and pydantic's error locations (the key a user mistyped must appear in the message).
"""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from unfoldmem.unfold.classifier import ClassifierConfig
from unfoldmem.unfold.omnifold_config import MIN_EPOCHS, OmniFoldConfig


def test_defaults_are_the_documented_ones() -> None:
    """K = 4, one classifier per step, sum rule and push refinement on, the classifiers train
    at least MIN_EPOCHS epochs (the guard against the under-fitted early-stopped pushes)."""
    cfg = OmniFoldConfig()
    assert (cfg.iterations, cfg.step_ensemble, cfg.sum_rule, cfg.push_refine) == (4, 1, True, True)
    assert cfg.classifier.min_epochs == MIN_EPOCHS > 1
    assert cfg.stop_on_divergence and cfg.clip_fraction_max == pytest.approx(1e-3)
    # a fresh default classifier per config, never a shared mutable one
    assert OmniFoldConfig().classifier is not cfg.classifier


@pytest.mark.parametrize(
    ("key", "value"),
    [("iterations", 0), ("step_ensemble", 0), ("clip_fraction_max", 1.5),
     ("clip_fraction_max", -0.1)],
)
def test_out_of_range_values_name_their_key(key: str, value: object) -> None:
    with pytest.raises(ValidationError, match=key):
        OmniFoldConfig(**{key: value})


def test_unknown_and_nested_keys_are_refused_by_name() -> None:
    """A typo (``iteration``) and a bad nested value (``classifier.epochs: 0``,
    ``diagnostics.ess_ratio_min: 2``) are refused with the offending key in the message."""
    with pytest.raises(ValidationError, match="iteration"):
        OmniFoldConfig.model_validate({"iteration": 3})
    with pytest.raises(ValidationError, match=r"classifier\.epochs"):
        OmniFoldConfig.model_validate({"classifier": {"epochs": 0}})
    with pytest.raises(ValidationError, match=r"diagnostics\.ess_ratio_min"):
        OmniFoldConfig.model_validate({"diagnostics": {"ess_ratio_min": 2.0}})
    cfg = OmniFoldConfig()
    with pytest.raises(ValidationError, match="iterations"):
        cfg.iterations = -1  # validated on assignment too


def test_card_section_round_trip() -> None:
    """A card section (plain dict) gives the same config as the constructor, nested models
    included, and survives a dump/validate round trip."""
    section = {"iterations": 3, "push_refine": False,
               "classifier": {"kind": "deepset", "hidden": 16, "min_epochs": 5}}
    cfg = OmniFoldConfig.model_validate(section)
    assert cfg.classifier == ClassifierConfig(kind="deepset", hidden=16, min_epochs=5)
    assert OmniFoldConfig.model_validate(cfg.model_dump()) == cfg
