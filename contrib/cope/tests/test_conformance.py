"""CoPE passes the kernel's conformance kit (:mod:`clkernel.testing`), resuming inside an experience too."""

from __future__ import annotations

from clkernel.testing import check_training_plugin


def test_cope_conforms():
    results = check_training_plugin(name="cope", options={"mem_size": 50, "num_classes": 10})
    assert [r.status for r in results] == ["passed"] * 4
