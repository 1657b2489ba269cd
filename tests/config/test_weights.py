"""`--weights`: one spec parsed in one place (kinds, file: prefix, templates, round trip)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrguide.config import TrainConfig, from_dict
from cxrguide.config.weights import WeightsSpec
from cxrguide.errors import ConfigError


@pytest.mark.parametrize("text", ["none", "imagenet", "phantom"])
def test_keywords(text: str) -> None:
    spec = WeightsSpec.parse(f"  {text} ")
    assert spec == WeightsSpec(text) and not spec.is_file and str(spec) == text
    with pytest.raises(ValueError, match="names no file"):
        spec.file  # noqa: B018


def test_paths_templates_and_the_file_prefix(tmp_path: Path) -> None:
    spec = WeightsSpec.parse(str(tmp_path / "{backbone}.safetensors"))
    assert spec.kind == "file" and spec.templated
    filled = spec.for_backbone("vgg16")
    assert filled.file == tmp_path / "vgg16.safetensors" and not filled.templated
    assert WeightsSpec.parse("~/w.pth").for_backbone("x").file == Path.home() / "w.pth"
    named_like_a_keyword = WeightsSpec.parse("file:imagenet")
    assert named_like_a_keyword == WeightsSpec("file", "imagenet")
    assert str(named_like_a_keyword) == "file:imagenet"  # round trip keeps it a file
    for spec in (WeightsSpec("none"), filled, named_like_a_keyword):
        assert WeightsSpec.parse(str(spec)) == spec
    assert WeightsSpec.parse(filled) is filled  # a spec passes through


@pytest.mark.parametrize("text", ["", "   ", "file:"])
def test_empty_is_a_one_line_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^weights: give none, imagenet, phantom or a PATH"):
        WeightsSpec.parse(text)


def test_train_config_checks_its_weights_field() -> None:
    with pytest.raises(ConfigError, match="weights: give none"):
        from_dict(TrainConfig, {"weights": ""})  # validated as it is built
    assert from_dict(TrainConfig, {"weights": "imagenet"}).weights == "imagenet"
