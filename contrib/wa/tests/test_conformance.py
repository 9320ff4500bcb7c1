"""WA passes the kernel's conformance kit (:mod:`clkernel.testing`)."""

from __future__ import annotations

from clkernel.testing import check_training_plugin


def test_wa_conforms():
    results = check_training_plugin(name="wa", options={"mem_size": 40, "clip_weights": True})
    assert [r.status for r in results] == ["passed"] * 4
