"""``torch.compile`` for the strategy's model, in place (``nn.Module.compile``).

``torch.compile`` (Ansel et al., 2024, "PyTorch 2: Faster Machine Learning Through Dynamic Python Bytecode
Transformation and Graph Compilation") traces the model's forward pass into graphs that a backend (by default
TorchInductor, which generates Triton kernels on GPUs and C++/OpenMP on CPUs) compiles. The plugin calls
``state.model.compile(...)`` once, when the strategy starts (:func:`before_run`): the module itself is compiled,
not wrapped in an ``OptimizedModule``, so its ``state_dict()`` keys, its parameters (the optimizer's), every
plugin that reads ``state.model`` and every checkpoint stay exactly as without the plugin. A deep copy of the
model (a teacher, an average) is not compiled, and is correct.

The first minibatches pay the compilation (seconds to minutes); a model adaptation that adds modules, another
input shape (the last, shorter minibatch of an epoch) or switching between training and evaluation may compile
again (``dynamic`` decides whether shapes are traced as symbols). Inductor on the CPU needs a C++ compiler.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

import clkernel
from clkernel import TrainState

__all__ = ["MODES", "Compile"]

#: The ``mode`` option's values (TorchInductor's modes).
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class Compile:
    """Compile the strategy's model in place with ``torch.compile`` when the strategy starts.

    :param mode: one of :data:`MODES`: ``default``; ``reduce-overhead`` (CUDA graphs: less Python overhead per
        call, more memory); ``max-autotune`` (searches the fastest kernels: long compilation); or
        ``max-autotune-no-cudagraphs``. Only with the ``inductor`` backend.
    :param backend: a ``torch.compiler.list_backends(exclude_tags=())`` name: ``inductor`` generates code,
        ``eager`` / ``aot_eager`` only trace (to debug a graph break); from Python also a callable
        ``(torch.fx.GraphModule, example_inputs) -> callable``, as ``torch.compile`` takes.
    :param dynamic: trace shapes as symbols (True), never (False), or after a shape changed once (None).
    :param fullgraph: fail on any graph break instead of running that part eagerly.
    :raises ValueError: naming the option, for an unknown mode or backend, or a mode other than ``default`` with
        a backend other than ``inductor``.
    """

    name = "compile"

    def __init__(self, mode: str = "default", backend: str | Callable[..., Any] = "inductor",
                 dynamic: bool | None = None, fullgraph: bool = False) -> None:
        if mode not in MODES:
            raise ValueError(f"{self.name}: mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not callable(backend):
            backends = torch.compiler.list_backends(exclude_tags=())
            if backend not in backends:
                raise ValueError(f"{self.name}: unknown backend {backend!r}; backends: {', '.join(backends)}")
        if mode != "default" and backend != "inductor":
            raise ValueError(f"{self.name}: mode={mode} needs backend=inductor, got backend={backend}")
        for option, value in (("dynamic", dynamic), ("fullgraph", fullgraph)):
            if not isinstance(value, bool) and not (option == "dynamic" and value is None):
                raise ValueError(f"{self.name}: {option} must be true or false, got {value!r}")
        self.mode, self.backend, self.dynamic, self.fullgraph = mode, backend, dynamic, fullgraph

    @clkernel.hookimpl
    def before_run(self, state: TrainState) -> None:
        options = {"mode": self.mode} if self.backend == "inductor" and self.mode != "default" else {}
        state.model.compile(backend=self.backend, dynamic=self.dynamic, fullgraph=self.fullgraph, **options)

    def __repr__(self) -> str:
        return (f"Compile(mode={self.mode!r}, backend={self.backend!r}, dynamic={self.dynamic!r}, "
                f"fullgraph={self.fullgraph!r})")
