"""agem_project against hand-picked vectors (the paper's update rule, worked out by hand)."""

from __future__ import annotations

import pytest
import torch

from clkernel_agem import agem_project


def test_hand_picked_two_dimensional_case():
    # g = (1, -2), g_ref = (1, 1): g.g_ref = -1 < 0, g_ref.g_ref = 2, g~ = g + 0.5 g_ref = (1.5, -1.5)
    g, ref = torch.tensor([1.0, -2.0]), torch.tensor([1.0, 1.0])
    out = agem_project(g, ref)
    torch.testing.assert_close(out, torch.tensor([1.5, -1.5]), atol=0, rtol=0)
    assert float(out @ ref) == 0.0


def test_hand_picked_three_dimensional_case():
    # g = (3, -4, 1), g_ref = (0, 2, 0): g.g_ref = -8, g_ref.g_ref = 4, g~ = g + 2 g_ref = (3, 0, 1)
    g = torch.tensor([3.0, -4.0, 1.0], dtype=torch.float64)
    out = agem_project(g, torch.tensor([0.0, 2.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(out, torch.tensor([3.0, 0.0, 1.0], dtype=torch.float64), atol=0, rtol=0)
    assert out.dtype == torch.float64


def test_result_is_the_closest_vector_of_the_half_space():
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        g, ref = torch.randn(50, generator=gen, dtype=torch.float64), torch.randn(50, generator=gen,
                                                                                 dtype=torch.float64)
        if g @ ref > 0:
            g = -g
        out = agem_project(g, ref)
        assert abs(float(out @ ref)) < 1e-12  # on the boundary of {z: z.g_ref >= 0}
        step = g - out  # and g - g~ is normal to it: parallel to g_ref, pointing away from the half-space
        cos = float(step @ ref) / float(step.norm() * ref.norm())
        assert cos == pytest.approx(-1.0, abs=1e-12)


def test_no_violation_is_a_no_op():
    g = torch.tensor([1.0, 2.0])
    assert agem_project(g, torch.tensor([1.0, 0.5])) is g  # positive inner product
    assert agem_project(g, torch.tensor([2.0, -1.0])) is g  # zero inner product: not a violation
    assert agem_project(g, torch.zeros(2)) is g  # an empty memory gradient: nothing to divide by


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="reference_gradient"):
        agem_project(torch.ones(3), torch.ones(2))
    with pytest.raises(ValueError, match="gradient"):
        agem_project(torch.ones(2, 2), torch.ones(2, 2))
