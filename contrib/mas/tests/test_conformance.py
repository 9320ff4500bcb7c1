"""MAS passes the kernel's conformance kit (:mod:`clkernel.testing`)."""

from __future__ import annotations

import pytest

from clkernel.testing import check_training_plugin


# The kit trains with SGD (lr 0.05, momentum 0.9). MAS importances of this small MLP reach about 100 (the output's
# squared norm is sensitive to its weights), so lambda_reg = 1 makes the penalty's curvature 2 * 100 / 1 too
# stiff for that step size and the loss diverges, as it would in any implementation; 0.01 keeps it stable.
@pytest.mark.parametrize("options", [{"lambda_reg": 0.01}, {"lambda_reg": 0.01, "alpha": 0.5, "batch_size": 1}],
                         ids=["sum", "moving-average-per-sample"])
def test_mas_conforms(options):
    results = check_training_plugin(name="mas", options=options)
    assert [r.status for r in results] == ["passed"] * 4
