"""metriclearn.losses.registry: the loss table, the default loss and the one parser of loss terms."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import assert_one_line_error, invoke
from metriclearn.losses.registry import DEFAULT_LOSS, LOSSES, parse_loss_term


@pytest.mark.parametrize(
    "term, parsed",
    [("Cache:.50", ("cache", 0.5)), (" snn ", ("snn", 1.0)), (("Softmax", 2), ("softmax", 2.0)),
     (["uniformity", 0.05], ("uniformity", 0.05))],
)
def test_every_spelling_of_a_term_parses_to_one_pair(term, parsed) -> None:
    assert parse_loss_term(term) == parsed


@pytest.mark.parametrize(
    "term, error, message",
    [("triplet", ValueError, "loss name must be one of"), ("cache:x", ValueError, "must be a number, got 'x'"),
     (("cache", -1), ValueError, "weight of loss 'cache'"), (5, TypeError, "got 5"),
     (("cache", 1, 2), TypeError, r"\(NAME, WEIGHT\), got \('cache', 1, 2\)")],
)
def test_a_bad_term_names_itself(term, error, message) -> None:
    with pytest.raises(error, match=message):
        parse_loss_term(term)


def test_the_default_loss_is_what_config_objective_and_cli_use() -> None:
    from metriclearn.training import TrainConfig, build_objective

    assert TrainConfig().loss == list(DEFAULT_LOSS)
    objective = build_objective(None, 8, 3)
    assert objective.weights == dict(parse_loss_term(term) for term in DEFAULT_LOSS)
    assert objective.weights == {"neighborhood": 1.0, "uniformity": 0.05}  # as BENCHMARKS.md tuned it
    assert set(objective.weights) <= set(LOSSES)


def test_the_cli_refuses_a_bad_loss_through_the_same_parser() -> None:
    assert_one_line_error(invoke("train", "--loss", "neighborhood:0", "--out", "unused"), 2, "'--loss'",
                          "loss weight in 'neighborhood:0'")


def test_objectives_do_not_import_the_config() -> None:
    """The config ↔ objectives import circle is gone: both read the registry."""
    script = ("import sys, metriclearn.training.objectives as o; "
              "print('metriclearn.training.config' in sys.modules, o.LOSSES is sys.modules['metriclearn.losses."
              "registry'].LOSSES)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True"]
