"""EWC passes the kernel's conformance kit (:mod:`clkernel.testing`) in both modes."""

from __future__ import annotations

import pytest

from clkernel.testing import check_training_plugin


@pytest.mark.parametrize("options", [{}, {"ewc_lambda": 10.0, "keep_importance_data": True},
                                     {"mode": "online", "decay_factor": 0.5}],
                         ids=["separate", "separate-keep-importance-data", "online"])
def test_ewc_conforms(options):
    results = check_training_plugin(name="ewc", options=options)
    assert [r.status for r in results] == ["passed"] * 4
