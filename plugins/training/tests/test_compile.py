"""compile: the model is compiled in place (its forward passes go through the backend, its type, state_dict
names and parameters are unchanged), results match an uncompiled run, options are checked, and the plugin passes
the conformance kit. The tests use a backend that records the graphs and runs them as they are (no code
generation: quick and exact); inductor itself is exercised by tests/bench/bench_gpu.py (--compile)."""

from __future__ import annotations

import pytest
import torch

import clkernel
from clkernel.testing import check_training_plugin
from clkernel_training import Compile

GRAPHS: list[torch.fx.GraphModule] = []


def recording(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]):  # noqa: ANN201
    GRAPHS.append(gm)
    return gm.forward


def run_digits(make_strategy, make_mlp, digits, plugins):
    model = make_mlp()
    names = list(model.state_dict())
    strategy = make_strategy(plugins, model=model)
    results = clkernel.run(strategy, clkernel.Benchmark({"train": digits.train_stream,
                                                         "test": digits.test_stream}), eval_streams=("test",))
    assert type(model) is torch.nn.Sequential and list(model.state_dict()) == names
    assert strategy.state.optimizer.param_groups[0]["params"] == list(model.parameters())
    return model, results


def test_forward_passes_are_compiled_and_match_an_uncompiled_run(make_strategy, make_mlp, digits):
    torch.compiler.reset()
    GRAPHS.clear()
    model, results = run_digits(make_strategy, make_mlp, digits, [Compile(backend=recording)])
    assert GRAPHS, "no forward pass went through the backend"
    assert any("linear" in str(node.target) for gm in GRAPHS for node in gm.graph.nodes)
    reference, expected = run_digits(make_strategy, make_mlp, digits, [])
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, rtol=1e-5, atol=1e-6, msg=name)
    torch.compiler.reset()


@pytest.mark.parametrize("options, message", [
    ({"mode": "fast"}, "compile: mode must be one of default, reduce-overhead, max-autotune, "
                       "max-autotune-no-cudagraphs, got 'fast'"),
    ({"backend": "nope"}, "compile: unknown backend 'nope'; backends: "),
    ({"mode": "max-autotune", "backend": "eager"}, "compile: mode=max-autotune needs backend=inductor, "
                                                   "got backend=eager"),
    ({"fullgraph": "yes"}, "compile: fullgraph must be true or false, got 'yes'"),
])
def test_bad_options_name_the_option(options, message):
    with pytest.raises(ValueError) as error:
        clkernel.load("plugin", "compile", **options)
    assert str(error.value).startswith(message)


def test_conformance_kit():
    torch.compiler.reset()
    results = check_training_plugin(name="compile", options={"backend": "eager"})
    assert [r.status for r in results] == ["passed"] * 4
    torch.compiler.reset()
