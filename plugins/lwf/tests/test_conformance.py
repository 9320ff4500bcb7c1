"""LwF passes the kernel's conformance kit (:mod:`clkernel.testing`)."""

from __future__ import annotations

import pytest

from clkernel.testing import check_training_plugin


@pytest.mark.parametrize("options", [{}, {"alpha": [0.0, 1.0, 2.0, 2.0], "temperature": 1.0}],
                         ids=["default", "alpha-per-experience"])
def test_lwf_conforms(options):
    results = check_training_plugin(name="lwf", options=options)
    assert [r.status for r in results] == ["passed"] * 4
