"""Every training plugin of clkernel-training passes the kernel's conformance kit (:mod:`clkernel.testing`):
options, composition with replay and the default metrics, state_dict round trip, bit-identical resume."""

from __future__ import annotations

import pytest

from clkernel.testing import check_training_plugin

CASES = {
    "lr-scheduler-epoch": ("lr-scheduler", {"scheduler": "StepLR", "step_size": 1, "gamma": 0.5}),
    "lr-scheduler-iteration-reset": ("lr-scheduler", {"scheduler": "CosineAnnealingLR", "T_max": 20,
                                                       "step_every": "iteration", "reset_per_experience": True}),
    "early-stopping": ("early-stopping", {"monitor": "acc_stream/eval/test", "patience": 1}),
    "grad-clip": ("grad-clip", {"max_norm": 0.5}),
    "amp-float16-scaler": ("amp", {"dtype": "float16", "init_scale": 1024.0, "growth_interval": 3}),
    "grad-accumulation": ("grad-accumulation", {"steps": 3}),
    "ema": ("ema", {"decay": 0.9, "every": 2, "warmup": True}),
}


@pytest.mark.parametrize("case", CASES)
def test_plugin_conforms(case):
    name, options = CASES[case]
    results = check_training_plugin(name=name, options=options)
    assert [r.status for r in results] == ["passed"] * 4
