"""The lfl factory checks ``classifier`` against the model it is given (``clkernel run`` gives it), so that a name
the model lacks is refused before the run starts, naming the option and the model's submodules."""

from __future__ import annotations

import pytest
import torch

from clkernel_lfl.registration import lfl


def test_a_classifier_the_model_lacks_is_refused_when_built():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"^lfl: classifier 'no-such' is not a submodule of the model; "
                                         r"its submodules: 0, 1$"):
        lfl(classifier="no-such", model=model)
    assert lfl(classifier="1", model=model).classifier == "1"
