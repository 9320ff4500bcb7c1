"""Multi-task models refuse, when built by `clkernel run` (which passes ``benchmark``), a benchmark without task
labels."""

from __future__ import annotations

import pytest

from clkernel.discovery import Registry

from clkernel_models import registration


@pytest.fixture(scope="module")
def reg() -> Registry:
    r = Registry()
    r.add_module(registration, "models")
    return r


@pytest.mark.parametrize(("name", "options"), [("mt-simple-mlp", {"input_size": 8}),
                                               ("mt-simple-cnn", {"in_channels": 1})])
def test_multi_task_models_need_task_labels(reg, make_benchmark, name, options):
    assert "benchmark" in reg.get("model", name).options()  # filled by `clkernel run`
    with pytest.raises(ValueError, match=rf"^{name}: needs a benchmark with task labels \(e\.g\. "
                                         r"split-digits:return_task_id=True\); all 5 training experiences"):
        reg.load("model", name, benchmark=make_benchmark(task_labels=False), **options)
    assert reg.load("model", name, benchmark=make_benchmark(task_labels=True), **options) is not None
    # one experience: nothing to tell tasks apart, nothing to refuse
    assert reg.load("model", name, benchmark=make_benchmark(n_exp=1), **options) is not None
    assert reg.load("model", name, **options) is not None  # Python use without a benchmark


def test_single_head_models_do_not_take_the_benchmark(reg):
    for name in ("simple-mlp", "simple-cnn", "slim-resnet18"):
        assert "benchmark" not in reg.get("model", name).options()
