"""iCaRL, WA and IL2M check ``classifier`` against the model ``clkernel run`` gives their factories, so that a name
the model lacks is refused before the run starts, naming the plugin, the option and the model's submodules."""

from __future__ import annotations

import pytest
import torch

import clkernel


@pytest.mark.parametrize("name", ["icarl", "wa", "il2m"])
def test_a_classifier_the_model_lacks_is_refused_when_built(name):
    pytest.importorskip(f"clkernel_{name}")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    with pytest.raises(ValueError, match=rf"^{name}: classifier 'no-such' is not a submodule of the model; "
                                         r"its submodules: 0, 1$"):
        clkernel.load("plugin", name, classifier="no-such", model=model)
    assert clkernel.load("plugin", name, classifier="1", model=model) is not None
