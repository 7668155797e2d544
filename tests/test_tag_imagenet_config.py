"""``[tag.imagenet]`` is a sub-table TagConfig accepts and hands to the backend as options."""

import pytest

from posterkg.config import Config
from posterkg.errors import ConfigError
from posterkg.vlm.stage import TagConfig


def test_imagenet_options_reach_the_backend():
    cfg = Config({"tag": {"backend": "imagenet", "imagenet": {"threshold": 0.2, "top_k": 3}}})
    tag = cfg.section("tag", TagConfig)
    tag.check()
    assert tag.backend_options() == {"threshold": 0.2, "top_k": 3}


def test_imagenet_must_be_a_table():
    with pytest.raises(ConfigError, match=r"\[tag.imagenet\] must be a table"):
        TagConfig(backend="imagenet", imagenet=3).check()
