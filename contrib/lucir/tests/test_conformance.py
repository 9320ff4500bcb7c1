"""LUCIR passes the kernel's conformance kit (:mod:`clkernel.testing`) with a cosine-normalised MLP."""

from __future__ import annotations

from clkernel.testing import check_training_plugin
from clkernel_lucir import CosineMLP


def test_lucir_conforms():
    results = check_training_plugin(name="lucir", options={"mem_size": 100, "lambda_base": 2.0},
                                    model=lambda: CosineMLP(num_classes=10, input_size=64, hidden_size=32))
    assert [r.status for r in results] == ["passed"] * 4
