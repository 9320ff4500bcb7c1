"""LFL passes the kernel's conformance kit (:mod:`clkernel.testing`)."""

from __future__ import annotations

import pytest

from clkernel.testing import check_training_plugin


# The kit's default model is Sequential(Flatten, Linear, ReLU, Linear): its classifier is submodule "3".
@pytest.mark.parametrize("options", [{"classifier": "3"}, {"classifier": "3", "lambda_e": 1.0,
                                                           "freeze_classifier": False}],
                         ids=["defaults", "strong-unfrozen"])
def test_lfl_conforms(options):
    results = check_training_plugin(name="lfl", options=options)
    assert [r.status for r in results] == ["passed"] * 4
