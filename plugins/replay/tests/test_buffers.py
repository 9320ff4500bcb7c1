"""Storage policies on their own, outside any training loop."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from clkernel import CLDataset, Experience
from clkernel_replay import (ClassBalancedBuffer, ClosestToCenterSelection, ExperienceBalancedBuffer,
                             GreedyClassBalancedBuffer, HerdingSelection, ParametricBuffer, RandomSelection,
                             ReservoirSamplingBuffer, make_policy)

POLICIES = {
    "reservoir": lambda m: ReservoirSamplingBuffer(m, seed=0),
    "experience_balanced": lambda m: ExperienceBalancedBuffer(m, seed=0),
    "experience_balanced_fixed": lambda m: ExperienceBalancedBuffer(m, adaptive_size=False, num_experiences=6,
                                                                    seed=0),
    "class_balanced": lambda m: ClassBalancedBuffer(m, seed=0),
    "class_balanced_fixed": lambda m: ClassBalancedBuffer(m, adaptive_size=False, total_num_classes=12, seed=0),
    "greedy_class_balanced": lambda m: GreedyClassBalancedBuffer(m, seed=0),
    "parametric_random_class": lambda m: ParametricBuffer(m, groupby="class", selection=RandomSelection(0)),
    "parametric_herding_task": lambda m: ParametricBuffer(m, groupby="task", selection=HerdingSelection()),
    "parametric_closest_experience": lambda m: ParametricBuffer(m, groupby="experience",
                                                                selection=ClosestToCenterSelection()),
}


def experiences(blobs, sizes=(120, 15, 200, 60, 8, 90)):
    """Experiences of varying size (some smaller than a share of memory), two new classes each."""
    data = blobs.make_blobs(num_classes=12, per_class=100)
    out = []
    for e, n in enumerate(sizes):
        part = data.class_subset([2 * e, 2 * e + 1])
        out.append(Experience(e, part.subset(torch.randperm(len(part), generator=torch.Generator().manual_seed(e))
                                             [:n]).with_attribute("task_labels", e % 3)))
    return out


@pytest.mark.parametrize("policy", POLICIES)
def test_size_bound_holds_after_every_update(policy, blobs):
    buf = POLICIES[policy](50)
    seen = 0
    for exp in experiences(blobs):
        buf.update(exp)
        seen += len(exp.dataset)
        assert len(buf) <= 50
        assert len(buf.buffer) == len(buf)
        assert len(buf) == min(seen, len(buf))  # never more than what was seen
    assert len(buf) > 0


@pytest.mark.parametrize("policy", POLICIES)
def test_buffer_is_a_cldataset_view_with_data_attributes(policy, blobs):
    data = blobs.make_blobs(num_classes=4, per_class=50)
    buf = POLICIES[policy](30)
    buf.update(Experience(0, data.class_subset([0, 1])))
    buf.update(Experience(1, data.class_subset([2, 3])))
    view = buf.buffer
    assert isinstance(view, CLDataset)
    x, y, t = view.get_batch(torch.arange(len(view)))
    ids = view.sample_id  # the custom data attribute follows the selection
    full_x, full_y, _ = data.get_batch(ids)
    assert torch.equal(x, full_x) and torch.equal(y, full_y) and torch.equal(y, view.targets)
    assert len(set(ids.tolist())) == len(ids)  # no sample twice


def test_class_balanced_holds_share_per_class_within_one(blobs):
    data = blobs.make_blobs(num_classes=9, per_class=80)
    buf = ClassBalancedBuffer(100, seed=1)
    seen: set[int] = set()
    for e, classes in enumerate([[0, 1], [2], [3, 4, 5], [6, 7, 8]]):
        buf.update(Experience(e, data.class_subset(classes)))
        seen |= set(classes)
        sizes = buf.group_sizes()
        assert set(sizes) == seen
        share = 100 / len(seen)
        assert all(abs(n - share) < 1 for n in sizes.values()), sizes
        assert len(buf) == 100


def test_class_balanced_fixed_total_gives_each_class_its_share(blobs):
    data = blobs.make_blobs(num_classes=6, per_class=40)
    buf = ClassBalancedBuffer(60, adaptive_size=False, total_num_classes=6, seed=0)
    buf.update(data.class_subset([0, 1]))
    assert buf.group_sizes() == {0: 10, 1: 10}  # room left for the classes to come
    buf.update(data.class_subset([2, 3, 4, 5]))
    assert buf.group_sizes() == {c: 10 for c in range(6)}
    with pytest.raises(ValueError, match="total_num_classes=6"):
        buf.update(blobs.make_blobs(num_classes=7, per_class=5).class_subset([6]))


def test_greedy_class_balanced_is_balanced_keeps_old_samples_and_fills_unused_room(blobs):
    data = blobs.make_blobs(num_classes=4, per_class=100)
    buf = GreedyClassBalancedBuffer(90, seed=0)
    buf.update(data.class_subset([0, 1]))
    first = set(buf.buffer.sample_id.tolist())
    assert buf.group_sizes() == {0: 45, 1: 45}
    small = data.class_subset([2]).subset(range(10))  # a class with only 10 samples
    buf.update(small.concat(data.class_subset([3])))
    sizes = buf.group_sizes()
    assert sizes[2] == 10  # all it has; its unused share goes to the others
    assert len(buf) == 90 and all(abs(sizes[c] - 80 / 3) < 1 for c in (0, 1, 3)), sizes
    kept_old = [i for i in buf.buffer.sample_id.tolist() if data.targets[i] in (0, 1)]
    assert set(kept_old) <= first  # greedy: class 0/1 slots are the samples stored first, never replaced


def test_experience_balanced_gives_each_experience_its_share(blobs):
    buf = ExperienceBalancedBuffer(40, seed=0)
    data = blobs.make_blobs(num_classes=3, per_class=50)
    for e in range(3):
        buf.update(Experience(e, data.class_subset([e])))
    assert buf.group_sizes() == {0: 14, 1: 13, 2: 13}
    buf.update(data.class_subset([0]), key=7)  # a bare dataset with an explicit key
    assert buf.group_sizes() == {0: 10, 1: 10, 2: 10, 7: 10}


def test_reservoir_is_a_uniform_sample_of_everything_seen(blobs):
    data = blobs.make_blobs(num_classes=10, per_class=50)
    counts = torch.zeros(10)
    for seed in range(40):
        buf = ReservoirSamplingBuffer(50, seed=seed)
        for c in range(10):
            buf.update(data.class_subset([c]))
        counts += torch.bincount(buf.buffer.targets, minlength=10)
    share = counts / counts.sum()
    assert torch.all((share - 0.1).abs() < 0.03), share  # the first class is not favoured over the last


def test_reservoir_fed_fresh_datasets_keeps_only_the_sources_of_its_samples_alive():
    """100 updates with 3-sample datasets over fresh tensors: the others are freed, the buffer reads the rest."""
    g = torch.Generator().manual_seed(0)
    buf = ReservoirSamplingBuffer(5, seed=0)
    alive = []
    for k in range(100):
        x = torch.randn(3, 4, generator=g)
        alive.append(weakref.ref(x))
        buf.update(CLDataset.from_tensors(x, [0, 1, 2], part=k, row=torch.arange(3)))
        del x
    gc.collect()
    live = {k for k, ref in enumerate(alive) if ref() is not None}
    view = buf.buffer
    assert len(view) == 5 and len(live) <= 5
    assert live == set(view.part.tolist())  # exactly the datasets the buffer's samples come from
    expected = torch.stack([alive[k]()[r] for k, r in zip(view.part.tolist(), view.row.tolist())])
    assert torch.equal(view.get_batch(torch.arange(5))[0], expected)


def herding_reference(features: torch.Tensor, k: int) -> list[int]:
    """Plain-Python herding: each pick makes the running mean of the picks closest to the class mean."""
    mean = features.mean(0)
    picks: list[int] = []
    for _ in range(k):
        best, best_d = None, None
        for i in range(len(features)):
            if i in picks:
                continue
            d = float(((features[picks + [i]].mean(0) - mean) ** 2).sum())
            if best_d is None or d < best_d:
                best, best_d = i, d
        picks.append(best)  # type: ignore[arg-type]
    return picks


def test_herding_selects_the_samples_that_keep_the_running_mean_closest_to_the_class_mean():
    # 1-D features with mean 0. Herding picks 0.1 (closest), then -0.3 (running mean -0.1), then 0.5
    # (running mean 0.1), then -0.9 (running mean -0.15), where closest-to-centre would take 0.6 (mean 0.225).
    f = torch.tensor([[0.1], [0.5], [-0.3], [2.0], [-2.0], [0.6], [-0.9]])
    f = f - f.mean(0)
    x = f.clone()
    data = CLDataset.from_tensors(x, torch.zeros(len(x), dtype=torch.long))
    order = HerdingSelection().order(data, k=4).tolist()
    assert order[:4] == [0, 2, 1, 6] == herding_reference(f, 4)
    assert sorted(order) == list(range(len(x)))
    # the running mean of the herded prefix is closer to the class mean than the closest-to-centre prefix's
    closest = ClosestToCenterSelection().order(data, k=4).tolist()
    assert closest[:4] == [0, 2, 1, 5]
    assert abs(float(f[order[:4]].mean())) < abs(float(f[closest[:4]].mean()))


def test_herding_on_random_features_matches_the_reference_and_parametric_buffer_keeps_its_prefix():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, 5, generator=g)
    data = CLDataset.from_tensors(x, torch.zeros(40, dtype=torch.long), sample_id=torch.arange(40))
    expected = herding_reference(x, 12)
    assert HerdingSelection().order(data, k=12)[:12].tolist() == expected
    buf = ParametricBuffer(12, groupby="class", selection=HerdingSelection())
    buf.update(data)
    assert sorted(buf.buffer.sample_id.tolist()) == sorted(expected)
    other = CLDataset.from_tensors(torch.randn(30, 5, generator=g) + 5, torch.ones(30, dtype=torch.long),
                                   sample_id=torch.arange(100, 130))
    buf.update(other)  # class 0 shrinks to 6: it keeps the first 6 herding picks
    kept0 = sorted(i for i in buf.buffer.sample_id.tolist() if i < 100)
    assert kept0 == sorted(expected[:6])


def test_feature_based_selection_uses_the_model_and_a_named_layer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    x = torch.randn(20, 4)
    data = CLDataset.from_tensors(x, torch.zeros(20, dtype=torch.long))
    with torch.no_grad():
        hidden = model[1](model[0](x))
    by_layer = HerdingSelection(layer="1").order(data, k=5, model=model)[:5].tolist()
    assert by_layer == herding_reference(hidden, 5)
    by_fn = ClosestToCenterSelection(feature_extractor=lambda v: model[0](v)).order(data, k=5)[:5]
    with torch.no_grad():
        h0 = model[0](x)
    assert by_fn.tolist() == torch.argsort(((h0 - h0.mean(0)) ** 2).sum(1))[:5].tolist()
    with pytest.raises(ValueError, match="layer 'nope'"):
        HerdingSelection(layer="nope").order(data, k=2, model=model)


def test_state_dict_and_restore_rebuild_the_same_buffer(blobs):
    exps = experiences(blobs)
    buf = ClassBalancedBuffer(40, seed=0)
    for exp in exps[:3]:
        buf.update(exp)
    state = buf.state_dict()
    again = ClassBalancedBuffer(40, seed=123)
    again.load_state_dict(state)
    with pytest.raises(RuntimeError, match="restore"):
        _ = again.buffer
    again.restore({e.index: e.dataset for e in exps})
    assert torch.equal(again.buffer.sample_id, buf.buffer.sample_id)
    for b in (buf, again):  # same future too: the generator state travels
        b.update(exps[3])
    assert torch.equal(again.buffer.sample_id, buf.buffer.sample_id)


@pytest.mark.parametrize("make, match", [
    (lambda: ReservoirSamplingBuffer(-3), "max_size must be a positive integer, got -3"),
    (lambda: ClassBalancedBuffer(0), "max_size"),
    (lambda: ClassBalancedBuffer(10, adaptive_size=False), "total_num_classes"),
    (lambda: ExperienceBalancedBuffer(10, adaptive_size=False), "num_experiences"),
    (lambda: ParametricBuffer(10, groupby="colour"), "groupby"),
    (lambda: make_policy("fifo", 10), "storage_policy 'fifo'"),
])
def test_bad_options_name_the_option(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_update_rejects_what_is_not_data():
    with pytest.raises(TypeError, match="Experience or a CLDataset"):
        ReservoirSamplingBuffer(5).update([1, 2, 3])  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", range(6))
def test_merging_new_samples_keeps_the_same_samples_as_sorting_everything(seed):
    from clkernel_replay.buffers import balanced_quotas, merge_top_per_group, top_per_group

    g = torch.Generator().manual_seed(seed)
    old_key, old_score = torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.float64)
    mem = int(torch.randint(5, 60, (1,), generator=g))
    for _ in range(6):
        n = int(torch.randint(1, 80, (1,), generator=g))
        new_key = torch.randint(0, int(torch.randint(1, 12, (1,), generator=g)), (n,), generator=g) * 3
        new_score = torch.rand(n, generator=g, dtype=torch.float64).round(decimals=2)  # with ties
        keep, key, score = merge_top_per_group(old_key, old_score, new_key, new_score,
                                               lambda k, c: balanced_quotas(len(k), mem))
        all_key, all_score = torch.cat([old_key, new_key]), torch.cat([old_score, new_score])
        keys, inv = torch.unique(all_key, return_inverse=True)
        expected = top_per_group(all_score, inv, balanced_quotas(len(keys), mem))
        # same group sizes and the same multiset of scores per group (ties may pick either sample)
        for k in keys.tolist():
            assert sorted(all_score[expected][all_key[expected] == k].tolist()) == sorted(score[key == k].tolist())
        assert torch.equal(all_key[keep], key) and torch.equal(all_score[keep], score)
        assert len(set(keep.tolist())) == len(keep) <= mem
        # the invariant: sorted by key, then score descending
        assert torch.all(key[1:] >= key[:-1])
        same = key[1:] == key[:-1]
        assert torch.all(score[1:][same] <= score[:-1][same])
        old_key, old_score = key, score
