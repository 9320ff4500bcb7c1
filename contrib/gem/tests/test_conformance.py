"""GEM passes the kernel's conformance kit (:mod:`clkernel.testing`)."""

from __future__ import annotations

import pytest

from clkernel.testing import check_training_plugin


@pytest.mark.parametrize("options", [{"patterns_per_experience": 32},
                                     {"patterns_per_experience": 16, "memory_strength": 0.0, "seed": 1}],
                         ids=["margin", "exact-projection"])
def test_gem_conforms(options):
    results = check_training_plugin(name="gem", options=options)
    assert [r.status for r in results] == ["passed"] * 4
