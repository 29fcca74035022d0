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


def test_every_named_recipe_is_a_valid_complete_config_that_round_trips():
    from raymae.recipes import RECIPES, recipe

    for name in RECIPES:
        cfg = recipe(name)
        cfg.model.resolved()
        assert RaymaeConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert recipe("cpu") is not recipe("cpu")  # a fresh copy each time: changing one changes no other
    assert recipe("paper").stage2.freeze_encoder and not recipe("cpu").stage2.freeze_encoder


def test_both_from_scratch_recipes_train_on_natural_anomalies_and_standardise_each_image():
    from raymae.recipes import recipe

    for name in ("cpu", "gpu"):
        cfg = recipe(name)
        assert cfg.intensity == "per_image", name  # a darker lamp must not be an anomaly
        assert cfg.corruption.natural_share == 0.5 and cfg.corruption.natural_intensity == (10.0, 50.0), name
    assert recipe("paper").intensity != "per_image"  # the paper's setting, for its pretrained encoder


def test_an_unknown_recipe_is_named_with_the_choices():
    from raymae.recipes import recipe

    with pytest.raises(ConfigError, match="unknown recipe 'fast'; choose one of cpu, gpu, paper"):
        recipe("fast")
