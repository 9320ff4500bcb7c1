"""SI passes the kernel's conformance kit (:mod:`clkernel.testing`), resuming inside an experience too."""

from __future__ import annotations

import pytest

from clkernel.testing import check_training_plugin


@pytest.mark.parametrize("options", [{}, {"si_lambda": 1.0, "eps": 0.01}], ids=["defaults", "strong"])
def test_si_conforms(options):
    results = check_training_plugin(name="si", options=options)
    assert [r.status for r in results] == ["passed"] * 4
