"""TrainConfig: TOML round trip, unknown keys, value checks, loss terms."""

from __future__ import annotations

import pytest

from metriclearn.training import TrainConfig, parse_loss_term


def test_toml_round_trip(tmp_path) -> None:
    cfg = TrainConfig(loss=["neighborhood", "cache:0.5"], epochs=7, loss_options={"cache": {"size": 128}})
    cfg.save(tmp_path / "c.toml")
    back = TrainConfig.from_toml(tmp_path / "c.toml")
    assert back == cfg and back.terms() == [("neighborhood", 1.0), ("cache", 0.5)]


def test_unknown_keys_are_named(tmp_path) -> None:
    (tmp_path / "c.toml").write_text('epochs = 3\nlearning_rate = 0.1\nbatchsize = 3\n')
    with pytest.raises(ValueError, match=r"c.toml: unknown config keys 'batchsize', 'learning_rate'"):
        TrainConfig.from_toml(tmp_path / "c.toml")


def test_bad_toml_and_bad_values(tmp_path) -> None:
    (tmp_path / "bad.toml").write_text("epochs = [\n")
    with pytest.raises(ValueError, match="bad.toml: not valid TOML"):
        TrainConfig.from_toml(tmp_path / "bad.toml")
    with pytest.raises(ValueError, match="epochs must be a positive integer, got 0"):
        TrainConfig(epochs=0)
    with pytest.raises(TypeError, match="lr must be a number"):
        TrainConfig(lr="fast")
    with pytest.raises(ValueError, match="batch_size \\(128\\) must be a multiple of samples_per_class \\(200\\)"):
        TrainConfig(samples_per_class=200)
    with pytest.raises(ValueError, match="loss_options key must be one of"):
        TrainConfig(loss_options={"nca": {}})
    with pytest.raises(ValueError, match="val_fraction must be below 1"):
        TrainConfig(val_fraction=1.0)
    with pytest.raises(TypeError, match="amp must be true or false"):
        TrainConfig(amp="yes")
    with pytest.raises(ValueError, match="val_split must be one of 'samples', 'classes'; got 'groups'"):
        TrainConfig(val_split="groups")
    for spec in ("bogus", "mlp:", "mlp:32,x", "cnn:0", "sentence:", ""):
        with pytest.raises(ValueError, match="encoder must be one of 'mlp', 'mlp:H1,H2,...'"):
            TrainConfig(encoder=spec)
    assert TrainConfig(encoder="MLP:64,32").encoder == "MLP:64,32" and TrainConfig(encoder="sentence:/m").encoder


def test_loss_options_resolve_over_the_registry_tuned_options() -> None:
    from metriclearn.training.objectives import LOSSES

    cfg = TrainConfig(loss_options={"neighborhood": {"temperature": 0.05}, "cache": {"size": 64}})
    assert cfg.loss_options["neighborhood"] == {**LOSSES["neighborhood"].tuned, "temperature": 0.05}
    assert cfg.loss_options["snn"] == dict(LOSSES["snn"].tuned)  # every tuned value shows in config.toml
    assert cfg.loss_options["cache"] == {"size": 64}  # the class default temperature applies, not restated


def test_parse_loss_term() -> None:
    assert parse_loss_term("Softmax:2") == ("softmax", 2.0)
    with pytest.raises(ValueError, match="loss name must be one of"):
        parse_loss_term("triplet")
    with pytest.raises(ValueError, match="must be a number, got 'x'"):
        parse_loss_term("cache:x")
    with pytest.raises(ValueError, match="must be a finite positive number"):
        parse_loss_term("cache:-1")


def test_loss_terms_are_spelled_canonically_so_equal_settings_compare_equal() -> None:
    assert TrainConfig(loss=["Cache:.50", "snn:1", "softmax:2", "prototype:0.123456789"]).loss == [
        "cache:0.5", "snn", "softmax:2.0", "prototype:0.123456789"]


def test_replace_validates() -> None:
    cfg = TrainConfig().replace(epochs=2, loss=["snn"])
    assert cfg.epochs == 2 and cfg.loss == ["snn"]
    with pytest.raises(ValueError, match="unknown config key 'nope'"):
        cfg.replace(nope=1)
