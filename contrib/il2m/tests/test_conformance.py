"""IL2M passes the kernel's conformance kit (:mod:`clkernel.testing`)."""

from __future__ import annotations

import pytest

from clkernel.testing import check_training_plugin


@pytest.mark.parametrize("score", ["logits", "softmax"])
def test_il2m_conforms(score):
    results = check_training_plugin(name="il2m", options={"mem_size": 40, "score": score})
    assert [r.status for r in results] == ["passed"] * 4
