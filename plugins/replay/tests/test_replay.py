"""The replay plugin in the kernel's loop."""

from __future__ import annotations

import pytest
import torch

import clkernel
from clkernel import CLDataset, Experience, PluginError, Stream, Strategy
from clkernel_replay import ClassBalancedBuffer, Replay


def run(blobs, plugins, bench=None, epochs=1, mb=16, seed=0, num_classes=None):
    bench = bench or blobs.make_benchmark()
    model = blobs.make_model(num_classes=num_classes or bench.num_classes, seed=seed)
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.05), plugins=plugins, train_mb_size=mb,
                        train_epochs=epochs, device="cpu", generator=torch.Generator().manual_seed(seed))
    for exp in bench.train_stream:
        strategy.train(exp)
    return strategy, bench


def test_minibatches_mix_current_data_and_buffer_samples(blobs):
    probe = blobs.Probe()
    replay = Replay(mem_size=40, batch_size_mem=6, seed=0)
    run(blobs, [replay, probe])
    first = [n for e, n in probe.mb_sizes if e == 0]
    second = [y for e, y in probe.mbs if e == 1]
    assert set(first) <= {16, 120 % 16}  # nothing to replay during the first experience
    assert all(len(y) == n + 6 for y, n in zip(second, [16] * 7 + [120 % 16]))
    for y in second:  # current classes first, then 6 replayed samples of the first experience's classes
        assert set(y[:-6].tolist()) <= {2, 3} and set(y[-6:].tolist()) <= {0, 1}
    replayed = torch.cat([y[-6:] for y in second])
    assert set(replayed.tolist()) == {0, 1}


def test_buffer_is_updated_after_each_experience(blobs):
    replay = Replay(mem_size=40, storage_policy="class_balanced", seed=0)
    bench = blobs.make_benchmark(num_exps=3)
    sizes = []

    class After:
        name = "after"

        @clkernel.hookimpl
        def after_training_exp(self, state):
            sizes.append(dict(replay.storage_policy.group_sizes()))

    run(blobs, [replay, After()], bench=bench)
    # plugins run in the order listed: After sees the buffer replay has just updated
    assert sizes == [{0: 20, 1: 20}, {c: 10 for c in range(4)}, {0: 7, 1: 7, 2: 7, 3: 7, 4: 6, 5: 6}]


def test_batch_size_mem_defaults_to_the_training_minibatch_size(blobs):
    probe = blobs.Probe()
    run(blobs, [Replay(mem_size=30, seed=0), probe], mb=10)
    assert {n for e, n in probe.mb_sizes if e == 1} == {20}


def test_task_balanced_draws_the_same_number_from_each_task(blobs):
    bench = blobs.make_benchmark(num_exps=3, task_incremental=True)
    probe = blobs.Probe()
    replay = Replay(mem_size=60, batch_size_mem=8, task_balanced=True, storage_policy="reservoir", seed=0)
    run(blobs, [replay, probe], bench=bench)
    third = [y for e, y in probe.mbs if e == 2]
    for y in third:
        replayed = y[-8:]
        assert int((replayed < 2).sum()) == 4 and int(((replayed >= 2) & (replayed < 4)).sum()) == 4


def test_replay_keeps_old_classes_where_naive_forgets_them(blobs):
    bench = blobs.make_benchmark(num_exps=2, per_class=80)
    naive, _ = run(blobs, [], bench=bench, epochs=4)
    replay, _ = run(blobs, [Replay(mem_size=80, seed=0)], bench=bench, epochs=4)
    naive_old = blobs.accuracy(naive.state.model, bench.test_stream)[0]
    replay_old = blobs.accuracy(replay.state.model, bench.test_stream)[0]
    assert replay_old >= 0.95
    assert naive_old <= replay_old - 0.3


def test_replay_with_a_non_tensor_dataset_falls_back_to_per_item_reads(blobs):
    base = blobs.make_blobs(num_classes=4, per_class=30)
    x, y, _ = base.get_batch(torch.arange(len(base)))
    items = torch.utils.data.TensorDataset(x, y)  # a plain torch Dataset: not the batched path
    data = CLDataset.from_dataset(items, targets=y)
    stream = Stream("train", [Experience(e, data.class_subset([2 * e, 2 * e + 1])) for e in range(2)])
    probe = blobs.Probe()
    model = blobs.make_model()
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.05),
                        plugins=[Replay(mem_size=20, batch_size_mem=5, seed=0), probe], train_mb_size=8,
                        device="cpu")
    strategy.train(stream)
    assert {n for e, n in probe.mb_sizes if e == 1} == {13, 60 % 8 + 5}


def test_checkpoint_round_trip_restores_the_buffer_from_the_stream(blobs):
    bench = blobs.make_benchmark(num_exps=3)
    a = Replay(mem_size=30, seed=0)
    strategy, _ = run(blobs, [a], bench=bench.__class__({"train": bench.train_stream[:2],
                                                          "test": bench.test_stream}), num_classes=6)
    saved = a.state_dict()
    b = Replay(mem_size=30, seed=99)
    b.load_state_dict(saved)
    model = blobs.make_model(num_classes=6)
    Strategy(model, torch.optim.SGD(model.parameters(), lr=0.01), plugins=[b], device="cpu",
             train_mb_size=16).train(bench.train_stream[2])
    a_model = strategy.state.model
    Strategy(a_model, torch.optim.SGD(a_model.parameters(), lr=0.01), plugins=[a], device="cpu",
             train_mb_size=16).train(bench.train_stream[2])
    assert torch.equal(a.buffer.sample_id, b.buffer.sample_id)


@pytest.mark.parametrize("kwargs, match", [
    ({"mem_size": -5}, "replay: mem_size must be a positive integer, got -5"),
    ({"mem_size": 0}, "mem_size"),
    ({"batch_size_mem": 0}, "batch_size_mem"),
    ({"storage_policy": "lifo"}, "storage_policy 'lifo'"),
    ({"mem_size": 100, "storage_policy": ClassBalancedBuffer(50)}, "mem_size=100 but storage_policy.max_size=50"),
])
def test_bad_options_name_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Replay(**kwargs)


def test_mismatched_buffer_samples_give_a_clear_error(blobs):
    replay = Replay(mem_size=10, seed=0)
    replay.storage_policy.update(CLDataset.from_tensors(torch.zeros(12, 3), torch.zeros(12, dtype=torch.long)))
    with pytest.raises(PluginError, match=r"buffer samples have shape \(3,\)"):
        run(blobs, [replay])


def test_a_buffer_of_files_read_ahead_by_workers_gives_the_minibatches_and_checkpoints_of_one_read_here(blobs):
    base = blobs.make_blobs(num_classes=4, per_class=30)
    x, y, _ = base.get_batch(torch.arange(len(base)))
    data = CLDataset.from_dataset(torch.utils.data.TensorDataset(x, y), targets=y)  # not in memory: items read
    stream = Stream("train", [Experience(e, data.class_subset([2 * e, 2 * e + 1])) for e in range(2)])
    runs = []
    for workers in (0, 2):
        probe, replay = blobs.Probe(), Replay(mem_size=20, batch_size_mem=5, seed=0)
        model = blobs.make_model()
        with Strategy(model, torch.optim.SGD(model.parameters(), lr=0.05), plugins=[replay, probe], train_mb_size=8,
                      train_epochs=2, device="cpu", generator=torch.Generator().manual_seed(0),
                      loader_options={"num_workers": workers}) as strategy:  # closing puts back the reader options
            strategy.train(stream)
        runs.append(([y for _, y in probe.mbs], list(model.parameters()), replay.state_dict()["generator"]))
    (mbs, params, generator), (mbs_ahead, params_ahead, generator_ahead) = runs
    assert len(mbs) == len(mbs_ahead) == 2 * 2 * 8
    assert all(torch.equal(a, b) for a, b in zip(mbs, mbs_ahead))
    assert all(torch.equal(a, b) for a, b in zip(params, params_ahead))
    assert torch.equal(generator, generator_ahead)  # as if nothing had been read ahead at the experience's end


def test_a_sampler_reading_ahead_gives_the_state_after_the_last_minibatch_it_returned(blobs):
    from clkernel.data import set_batch_reader_options
    from clkernel_replay import BufferSampler

    base = blobs.make_blobs(num_classes=2, per_class=5)
    x, y, _ = base.get_batch(torch.arange(len(base)))
    files = CLDataset.from_dataset(torch.utils.data.TensorDataset(x, y), targets=y)
    draws = {}
    for workers in (0, 2):
        previous = set_batch_reader_options({"num_workers": workers} if workers else None)
        try:
            sampler = BufferSampler(files, 3, generator=torch.Generator().manual_seed(0))
            first = [sampler.draw()[1] for _ in range(8)]  # 24 samples: 3 passes over 10 begun
            orders, generator = sampler.state()
            read_ahead = not torch.equal(sampler.generator.get_state(), generator)  # 2 x 2 draws read ahead: a 4th pass
            assert read_ahead == (workers > 0)
            sampler.close()
            assert [o.tolist() for o in sampler.orders] == [o.tolist() for o in orders]
            assert torch.equal(sampler.generator.get_state(), generator)
            draws[workers] = (first, [o.tolist() for o in orders], generator, [sampler.draw()[1] for _ in range(8)])
            sampler.close()
        finally:
            set_batch_reader_options(previous)
    (first, orders, generator, then), (first_ahead, orders_ahead, generator_ahead, then_ahead) = draws[0], draws[2]
    assert [b.tolist() for b in first] == [b.tolist() for b in first_ahead]
    assert orders == orders_ahead and len(orders[0]) == 6  # 24 drawn: 6 left of the third pass
    assert torch.equal(generator, generator_ahead)
    assert [b.tolist() for b in then] == [b.tolist() for b in then_ahead]  # after close, the same draws again
