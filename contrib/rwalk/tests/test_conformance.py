"""RWalk passes the kernel's conformance kit (:mod:`clkernel.testing`), resuming inside an experience too."""

from __future__ import annotations

import pytest

from clkernel.testing import check_training_plugin


@pytest.mark.parametrize("options", [{}, {"ewc_lambda": 1.0, "alpha": 0.5, "delta_t": 3}],
                         ids=["defaults", "strong-delta3"])
def test_rwalk_conforms(options):
    results = check_training_plugin(name="rwalk", options=options)
    assert [r.status for r in results] == ["passed"] * 4
