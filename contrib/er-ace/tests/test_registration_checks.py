"""The er-aml factory checks ``feature_layer`` against the model it is given (``clkernel run`` gives it), so that a
name the model lacks is refused before the run starts, naming the option and the model's submodules."""

from __future__ import annotations

import pytest
import torch

from clkernel_er_ace.registration import er_aml


def test_a_feature_layer_the_model_lacks_is_refused_when_built():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"^er-aml: feature_layer 'no-such' is not a submodule of the model; "
                                         r"its submodules: 0, 1$"):
        er_aml(feature_layer="no-such", model=model)
    assert er_aml(feature_layer="0", model=model).feature_layer == "0"
