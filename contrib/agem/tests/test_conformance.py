"""A-GEM passes the kernel's conformance kit (:mod:`clkernel.testing`)."""

from __future__ import annotations

import pytest

from clkernel.testing import check_training_plugin


@pytest.mark.parametrize("options", [{"patterns_per_experience": 40, "sample_size": 16},
                                     {"patterns_per_experience": 10, "sample_size": 256, "seed": 1}],
                         ids=["sampled-reference", "whole-memory-reference"])
def test_agem_conforms(options):
    results = check_training_plugin(name="agem", options=options)
    assert [r.status for r in results] == ["passed"] * 4
