"""gem_project against values worked out by hand and against an independent brute-force solution of the primal QP."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from clkernel_gem import gem_project


def brute_force_projection(g: np.ndarray, G: np.ndarray) -> np.ndarray:
    """argmin ||z - g|| s.t. G z >= 0, by enumerating which constraints are tight.

    The minimiser is the projection of g onto the subspace {z: G_S z = 0} of some set S of tight constraints; of
    all those projections that are feasible, it is the closest to g. Independent of quadprog and of the dual.
    """
    best, best_dist = None, np.inf
    for k in range(len(G) + 1):
        for subset in itertools.combinations(range(len(G)), k):
            z = g.copy()
            if subset:
                A = G[list(subset)]
                z = g - A.T @ np.linalg.lstsq(A @ A.T, A @ g, rcond=None)[0]
            if (G @ z >= -1e-9).all() and np.linalg.norm(z - g) < best_dist:
                best, best_dist = z, np.linalg.norm(z - g)
    return best


def test_two_tight_constraints_by_hand():
    # g = (-2, -1, 3), g_1 = (1, 0, 0), g_2 = (1, 1, 0): both constraints violated (-2, -3).
    # Both tight at the solution: z = (0, 0, 3) = g + 1*g_1 + 1*g_2, dual v = (1, 1) >= 0, so it is optimal.
    g = torch.tensor([-2.0, -1.0, 3.0], dtype=torch.float64)
    G = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    out = gem_project(g, G, memory_strength=0.0, eps=0.0)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64), atol=1e-12, rtol=0)


def test_one_tight_constraint_by_hand():
    # g = (-1, -2, 3): with both tight the dual would be v = (-1, 2) < 0, so only g_2 is tight:
    # z = g + v g_2 with z_1 + z_2 = 0 -> v = 1.5, z = (0.5, -0.5, 3); z_1 = 0.5 >= 0 holds.
    g = torch.tensor([-1.0, -2.0, 3.0], dtype=torch.float64)
    G = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    out = gem_project(g, G, memory_strength=0.0, eps=0.0)
    torch.testing.assert_close(out, torch.tensor([0.5, -0.5, 3.0], dtype=torch.float64), atol=1e-12, rtol=0)


def test_memory_strength_is_the_dual_lower_bound_by_hand():
    # Same g and G as the two-constraint case. Dual: min v^T P v / 2 + (G g)^T v, P = [[1, 1], [1, 2]],
    # G g = (-2, -3); unconstrained minimiser v = P^-1 (2, 3) = (1, 1). With v >= 2 both bounds bind
    # (the gradient P v - (2, 3) = (2, 3) > 0 at v = (2, 2)), so g~ = g + 2 g_1 + 2 g_2 = (2, 1, 3).
    g = torch.tensor([-2.0, -1.0, 3.0], dtype=torch.float64)
    G = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(gem_project(g, G, memory_strength=2.0, eps=0.0),
                               torch.tensor([2.0, 1.0, 3.0], dtype=torch.float64), atol=1e-12, rtol=0)
    # gamma = 0.5 is below the unconstrained v = (1, 1): the exact projection again
    torch.testing.assert_close(gem_project(g, G, memory_strength=0.5, eps=0.0),
                               torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force_and_satisfies_every_constraint(seed):
    rng = np.random.default_rng(seed)
    t, n = 4, 9
    G = rng.standard_normal((t, n))
    g = rng.standard_normal(n)
    g -= 1.5 * G[0] * (G[0] @ g + 1.0) / (G[0] @ G[0])  # make sure at least one constraint is violated
    assert (G @ g < 0).any()
    out = gem_project(torch.from_numpy(g), torch.from_numpy(G), memory_strength=0.0, eps=0.0).numpy()
    expected = brute_force_projection(g, G)
    np.testing.assert_allclose(out, expected, atol=1e-8)
    assert (G @ out >= -1e-9).all()
    # float32 inputs, the authors' ridge eps = 1e-3: still the same vector up to O(eps), constraints within
    # tolerance, result in float32
    out32 = gem_project(torch.from_numpy(g).float(), torch.from_numpy(G).float())
    assert out32.dtype == torch.float32
    np.testing.assert_allclose(out32.numpy(), expected, atol=5e-3)
    assert (G @ out32.double().numpy() >= -5e-3).all()


def test_with_margin_every_inner_product_is_non_negative():
    # Dual KKT: P v + G g = mu >= 0, so G g~ = G (G^T v + g) = P v + G g = mu >= 0 exactly when eps = 0; the ridge
    # shifts it by -eps * v (the authors' code has the same tolerance).
    rng = np.random.default_rng(7)
    for _ in range(5):
        G = torch.from_numpy(rng.standard_normal((5, 20)))
        g = torch.from_numpy(rng.standard_normal(20)) - G.sum(0)
        assert (G @ g < 0).any()
        exact = gem_project(g, G, memory_strength=0.5, eps=0.0)
        assert (G @ exact >= -1e-9).all()
        ridge = gem_project(g, G, memory_strength=0.5)
        assert (G @ ridge >= -1e-2).all()
        torch.testing.assert_close(ridge, exact, atol=1e-2, rtol=0)


def test_no_violation_is_a_no_op_whatever_the_margin():
    G = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    g = torch.tensor([0.5, 0.0, -4.0])  # inner products 0.5 and 0.5
    for strength in (0.0, 0.5, 10.0):
        assert gem_project(g, G, memory_strength=strength) is g
    assert gem_project(g, torch.zeros(0, 3)) is g  # no memory yet
    zero = torch.tensor([0.0, 0.0, 1.0])  # inner products exactly 0: not a violation
    assert gem_project(zero, G) is zero


def test_bad_input_is_refused_naming_the_culprit():
    G = torch.ones(2, 3)
    with pytest.raises(ValueError, match="memory_gradients"):
        gem_project(torch.ones(4), G)
    with pytest.raises(ValueError, match="memory_strength"):
        gem_project(-torch.ones(3), G, memory_strength=-1.0)
    with pytest.raises(ValueError, match="eps"):
        gem_project(-torch.ones(3), G, eps=-1e-3)
    # identical memory gradients, no ridge: the Gram matrix is singular
    with pytest.raises(ValueError, match="linearly independent"):
        gem_project(-torch.ones(3), G, eps=0.0)
