"""The recipe round-trips through JSON and refuses settings that cannot work."""

import json

import pytest

from raymae.config import ConfigError, RaymaeConfig


def test_the_recipe_round_trips_through_json():
    cfg = RaymaeConfig()
    cfg.model.deep_supervision = True
    cfg.stage2.class_weights = (1.0, 9.0)
    again = RaymaeConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_unknown_settings_are_named_in_the_error():
    data = RaymaeConfig().to_dict()
    data["stage1"]["epoch"] = 3
    with pytest.raises(ConfigError, match="epoch"):
        RaymaeConfig.from_dict(data)


def test_a_choice_outside_its_options_is_refused():
    data = RaymaeConfig().to_dict()
    data["anomaly_map"]["combination"] = "sum"
    with pytest.raises(ConfigError, match="combination"):
        RaymaeConfig.from_dict(data)


@pytest.mark.parametrize("setting, value", [("anomaly_prior", 1.0), ("focal_gamma", -1.0), ("dice_weight", -0.5)])
def test_stage2_classification_settings_outside_their_range_are_refused(setting, value):
    data = RaymaeConfig().to_dict()
    data["stage2"][setting] = value
    with pytest.raises(ConfigError, match=setting):
        RaymaeConfig.from_dict(data)
