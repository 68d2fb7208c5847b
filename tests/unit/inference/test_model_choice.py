"""Settings name the model: the test model, Whisper, or a factory of one's own."""

from __future__ import annotations

import re

import numpy as np
import pytest
from model_factories import Loudness
from pydantic import ValidationError

from streamer.app import build_model
from streamer.config import Settings
from streamer.inference.model import TestModel, UnsupportedModel


def _settings(model: str) -> Settings:
    return Settings(inference={"model": model})


def test_the_test_model_is_the_default() -> None:
    assert isinstance(build_model(Settings()), TestModel)


def test_a_factory_named_by_its_import_path_builds_the_model() -> None:
    model = build_model(_settings("model_factories:loudness"))
    assert isinstance(model, Loudness)
    assert model.infer(np.full(800, 0.5, dtype=np.float32))["dbfs"] == -6.02


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("no_such_module:factory", "cannot load the model factory no_such_module:factory"),
        ("model_factories:no_such_factory", "cannot load the model factory"),
        ("transcripts:SAID", "is not callable"),
        ("model_factories:not_a_model", "made a object, which is not a model"),
    ],
)
def test_a_factory_that_cannot_make_a_model_is_refused_clearly(
    reference: str, message: str
) -> None:
    with pytest.raises(UnsupportedModel, match=re.escape(message)):
        build_model(_settings(reference))


@pytest.mark.parametrize("reference", ["", "whisperer", "module.only", ":factory", "a:b:c"])
def test_a_name_that_is_neither_built_in_nor_an_import_path_is_invalid(reference: str) -> None:
    with pytest.raises(ValidationError, match=r"inference\.model"):
        _settings(reference)
