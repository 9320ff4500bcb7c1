"""Reading data: DataLoader workers for data that is not in memory (persistent across epochs, read-ahead
streams, get_batch through workers), and in-memory data gathered on its device.

The device path is tested on PyTorch's ``meta`` device (tensors without data, on every machine): a minibatch
gathered there comes back there, ``x``, ``y`` and ``t``, which it could not if any part were gathered on the
CPU. A CUDA test checks values and skips where there is no GPU.
"""

from __future__ import annotations

import os

import pytest
import torch

from clkernel import CLDataset, iterate_minibatches
from clkernel.data import MinibatchLoader, set_batch_reader_options


class Files(torch.utils.data.Dataset):
    """Stands for files: item ``i`` is ``([i, pid of the reading process], i % 3)``."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int):
        return torch.tensor([float(i), float(os.getpid())]), i % 3


@pytest.fixture
def files() -> CLDataset:
    return CLDataset.from_dataset(Files(), task_labels=torch.arange(12) // 6)


@pytest.fixture
def reader_options():
    """Restore the get_batch reader options after the test."""
    previous = set_batch_reader_options(None)
    yield
    set_batch_reader_options(previous)


def test_persistent_workers_read_every_epoch_of_an_experience(files):
    loader = MinibatchLoader(files, {"num_workers": 2, "persistent_workers": True})
    orders = [torch.tensor([3, 0, 7, 11, 5, 1, 9, 2, 10, 4, 8, 6]), torch.arange(11, -1, -1)]
    pids = set()
    for order in orders:
        batches = list(iterate_minibatches(files, 5, shuffle=False, indices=order, loader=loader))
        assert [len(b[1]) for b in batches] == [5, 5, 2] and all(isinstance(b, tuple) for b in batches)
        x = torch.cat([b[0] for b in batches])
        assert x[:, 0].long().tolist() == order.tolist()  # the epoch's order, minibatch by minibatch
        assert torch.cat([b[1] for b in batches]).tolist() == (order % 3).tolist()
        assert torch.cat([b[2] for b in batches]).tolist() == (order // 6).tolist()
        pids |= set(x[:, 1].long().tolist())
    assert len(pids) == 2 and os.getpid() not in pids  # the same two worker processes, both epochs
    loader.close()
    with pytest.raises(RuntimeError, match="closed"):
        loader([[0]])


def test_without_workers_minibatches_are_read_here_and_options_for_workers_are_ignored(files):
    batches = list(iterate_minibatches(files, 4, shuffle=True, generator=torch.Generator().manual_seed(0),
                                       loader_options={"persistent_workers": True, "prefetch_factor": 4}))
    order = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    x = torch.cat([b[0] for b in batches])
    assert x[:, 0].long().tolist() == order.tolist()
    assert set(x[:, 1].long().tolist()) == {os.getpid()}


def test_an_endless_stream_of_draws_is_read_ahead_in_order(files):
    drawn = []

    def draws():
        g = torch.Generator().manual_seed(1)
        while True:
            drawn.append(torch.randint(0, 12, (3,), generator=g))
            yield drawn[-1]

    stream = MinibatchLoader(files, {"num_workers": 1, "prefetch_factor": 2})(draws())
    got = [next(stream) for _ in range(5)]
    assert len(drawn) > 5  # the worker read ahead of what was consumed
    for (x, y, _), idx in zip(got, drawn):
        assert x[:, 0].long().tolist() == idx.tolist() and y.tolist() == (idx % 3).tolist()


def test_get_batch_of_files_reads_through_persistent_workers_when_asked(files, reader_options):
    idx = torch.tensor([7, 2, 2, 11, 0])
    x, y, t = files.get_batch(idx)  # no workers asked: read here
    assert x[:, 0].long().tolist() == [7, 2, 2, 11, 0] and set(x[:, 1].tolist()) == {os.getpid()}
    assert y.tolist() == [1, 2, 2, 2, 0] and t.tolist() == [1, 0, 0, 1, 0]
    set_batch_reader_options({"num_workers": 2})
    pids = set()
    for _ in range(3):
        x, y, t = files.get_batch(idx)
        assert x[:, 0].long().tolist() == [7, 2, 2, 11, 0]
        assert y.tolist() == [1, 2, 2, 2, 0] and t.tolist() == [1, 0, 0, 1, 0]
        pids |= set(x[:, 1].long().tolist())
    assert len(pids) == 2 and os.getpid() not in pids  # split over both workers, which persist between reads


@pytest.mark.parametrize(("options", "error", "message"), [
    ({"batch_size": 8}, ValueError, "loader_options: batch_size cannot be set"),
    ({"shuffle": True, "sampler": None}, ValueError, "loader_options: shuffle, sampler cannot be set"),
    ({"num_wokers": 2}, TypeError, "num_wokers"),
])
def test_loader_options_the_loop_sets_itself_or_that_do_not_exist_are_refused(files, options, error, message):
    with pytest.raises(error, match=message):
        MinibatchLoader(files, options)
    if error is ValueError:
        with pytest.raises(error, match=message):
            set_batch_reader_options(options)


@pytest.mark.parametrize("workers", ["2", -1, 1.5, True])
def test_a_strategy_refuses_a_number_of_workers_that_is_not_a_count(workers):
    from clkernel import Strategy

    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=f"Strategy: loader_options num_workers must be an integer >= 0, got "
                                         f"{workers!r}"):
        Strategy(model, torch.optim.SGD(model.parameters(), lr=0.1), loader_options={"num_workers": workers})


def test_a_loader_of_another_dataset_is_refused(files):
    loader = MinibatchLoader(files.subset([0, 1]))
    with pytest.raises(ValueError, match="loader reads another dataset"):
        next(iterate_minibatches(files, 4, shuffle=False, loader=loader))


# --------------------------------------------------------------------------- in-memory data on a device


def _in_memory() -> CLDataset:
    x = torch.arange(40, dtype=torch.uint8).reshape(10, 1, 2, 2)
    return CLDataset.from_tensors(x, torch.arange(10) % 4, torch.arange(10) // 5,
                                  transform=lambda b: b.float().mul_(1 / 255))


def test_in_memory_data_moved_to_a_device_is_gathered_and_transformed_there():
    ds = _in_memory()
    assert ds.device == torch.device("cpu") and ds.to("cpu") is ds
    moved = ds.to("meta")
    assert moved.device.type == "meta" and moved.targets.device.type == "cpu"  # attributes stay on the CPU
    views = [moved, moved.subset([9, 3, 4, 0]), moved.class_subset([1, 2]).train()]
    for view in views:
        for x, y, t in iterate_minibatches(view, 3, shuffle=True, generator=torch.Generator().manual_seed(0)):
            assert (x.device.type, y.device.type, t.device.type) == ("meta", "meta", "meta")
            assert x.dtype == torch.float32 and x.shape[1:] == (1, 2, 2)
        x, y, t = view.get_batch(torch.tensor([1, 0]))  # indices on the CPU (a replay sampler's)
        assert (x.device.type, y.device.type, t.device.type) == ("meta", "meta", "meta") and x.shape[0] == 2
    buffer = moved.subset([2, 5]).concat(moved.subset([7]))  # a buffer of several views follows its data
    assert buffer.device.type == "meta" and buffer.get_batch(torch.tensor([2, 0]))[0].device.type == "meta"
    with pytest.raises(ValueError, match=r"different devices \(cpu, meta\)"):
        ds.concat(moved)


def test_from_tensors_keeps_labels_given_on_a_device_on_the_cpu():
    ds = CLDataset.from_tensors(torch.zeros(4, 2, device="meta"), torch.tensor([0, 1, 1, 0]))
    assert ds.device.type == "meta" and ds.targets.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: checks the values gathered on it")
def test_on_cuda_minibatches_and_buffers_equal_the_cpu_ones():
    ds = _in_memory()
    other = CLDataset.from_tensors(torch.full((4, 1, 2, 2), 200, dtype=torch.uint8), torch.tensor([3, 3, 0, 1]),
                                   transform=lambda b: b.float().mul_(1 / 255))
    for data in (ds, ds.concat(other).subset([13, 0, 11, 5, 12, 2])):
        cuda = data.to("cuda")
        for (x, y, t), (cx, cy, ct) in zip(
                iterate_minibatches(data, 4, shuffle=True, generator=torch.Generator().manual_seed(3)),
                iterate_minibatches(cuda, 4, shuffle=True, generator=torch.Generator().manual_seed(3))):
            assert cx.is_cuda and cy.is_cuda and ct.is_cuda
            assert torch.equal(cx.cpu(), x) and torch.equal(cy.cpu(), y) and torch.equal(ct.cpu(), t)
        idx = torch.tensor([1, 1, 0])
        for a, b in zip(data.get_batch(idx), cuda.get_batch(idx.cuda())):
            assert b.is_cuda and torch.equal(b.cpu(), a)


def test_replay_over_files_reads_its_buffer_through_the_reader_workers(files, reader_options):
    from clkernel import Experience, Naive, hookimpl
    from clkernel_replay import Replay

    seen: list[tuple[int, torch.Tensor]] = []

    class Record:
        @hookimpl
        def before_forward(self, state):
            seen.append((state.experience.index, state.mb[0].clone()))

    set_batch_reader_options({"num_workers": 1})
    model = torch.nn.Linear(2, 3)
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.0), device="cpu", train_mb_size=2,
                     eval_every=-1, plugins=[Replay(mem_size=4, batch_size_mem=2, seed=0), Record()])
    with strategy:
        strategy.train([Experience(0, files.class_subset([0, 1])), Experience(1, files.class_subset([2]))])
    second = [x for index, x in seen if index == 1]
    assert len(second) == 2 and all(len(x) == 4 for x in second)  # 2 current samples, then 2 from the buffer
    current, replayed = torch.cat([x[:2] for x in second]), torch.cat([x[2:] for x in second])
    assert set(current[:, 0].long().tolist()) == {2, 5, 8, 11} and set(current[:, 1].tolist()) == {os.getpid()}
    assert all(int(i) % 3 in (0, 1) for i in replayed[:, 0])  # buffer samples come from the first experience
    assert os.getpid() not in set(replayed[:, 1].tolist())  # read by the reader's worker


def test_get_batches_reads_ahead_with_workers_and_draws_one_at_a_time_without(files, reader_options):
    drawn = []

    def draws():  # endless, as a replay buffer's
        g = torch.Generator().manual_seed(0)
        while True:
            drawn.append(torch.randint(12, (4,), generator=g))
            yield drawn[-1]

    in_memory = CLDataset.from_tensors(torch.arange(12.0)[:, None], torch.arange(12) % 3)
    batches = in_memory.get_batches(draws())
    for k in range(3):
        x, y, _ = next(batches)
        assert len(drawn) == k + 1 and x[:, 0].long().tolist() == drawn[k].tolist()
    for workers in (0, 2):
        drawn.clear()
        set_batch_reader_options({"num_workers": workers} if workers else None)
        batches = files.get_batches(draws())
        for k in range(3):
            x, y, t = next(batches)
            assert x[:, 0].long().tolist() == drawn[k].tolist() and y.tolist() == (drawn[k] % 3).tolist()
            assert t.tolist() == (drawn[k] // 6).tolist()
        # without workers read here, one draw at a time; with them read by the workers, 2 x 2 minibatches ahead
        assert len(drawn) == (3 if workers == 0 else 3 + 2 * 2)
        assert (set(x[:, 1].long().tolist()) == {os.getpid()}) == (workers == 0)


def test_reading_draws_nothing_from_the_global_generator(files):
    for options in ({}, {"num_workers": 2}, {"num_workers": 2, "persistent_workers": True}):
        loader = MinibatchLoader(files, options)
        state = torch.get_rng_state()
        for _ in range(2):
            assert [len(b[1]) for b in loader([[0, 1], [2, 3, 4]])] == [2, 3]
        assert torch.equal(torch.get_rng_state(), state), options  # dropout and shuffles come out the same


def test_a_run_over_files_ends_alike_whatever_the_loader_options_and_resumes_bit_identical(tmp_path):
    from clkernel import Benchmark, Checkpointer, Experience, Stream, Strategy, run
    from clkernel.checkpoint import checkpoint_files, read_checkpoint

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 6, generator=g), torch.arange(4).repeat(24)
    x = x + 2 * torch.nn.functional.one_hot(y, 6)
    files = CLDataset.from_dataset(torch.utils.data.TensorDataset(x, y), targets=y)  # read item by item
    bench = Benchmark({name: Stream(name, [Experience(e, part.class_subset([2 * e, 2 * e + 1])) for e in range(2)])
                       for name, part in (("train", files.subset(range(64))), ("test", files.subset(range(64, 96))))})

    def train(options, every=0, resume=None):
        torch.manual_seed(0)  # the model, its dropout and the loop's shuffles draw from torch's global generator
        model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Dropout(0.3),
                                    torch.nn.Linear(16, 4))
        checkpoint = Checkpointer(tmp_path / "checkpoints", every=every, keep=100) if every else None
        strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=8, train_epochs=2,
                            device="cpu", loader_options=options, checkpoint=checkpoint)
        run(strategy, bench, resume_from=resume)
        return [p.detach().clone() for p in model.parameters()]

    reference = train({})
    for options in ({"num_workers": 2}, {"num_workers": 2, "persistent_workers": True}):
        assert all(torch.equal(a, b) for a, b in zip(reference, train(options))), options
    assert all(torch.equal(a, b) for a, b in zip(reference, train({"num_workers": 1}, every=3)))
    inside = [f for f in checkpoint_files(tmp_path / "checkpoints")
              if read_checkpoint(f)[0]["position"]["stage"] == "train"]
    assert len(inside) >= 4
    for f in (inside[1], inside[-1]):  # inside the first experience and the second
        assert all(torch.equal(a, b) for a, b in zip(reference, train({"num_workers": 2}, resume=f))), f.name


def test_no_worker_outlives_the_experience_it_read(files):
    import multiprocessing

    import clkernel
    from clkernel import Experience, Strategy

    model = torch.nn.Linear(2, 3)
    seen = []

    class Watch:
        @clkernel.hookimpl
        def after_training_epoch(self, state):
            seen.append(len(multiprocessing.active_children()))

    with Strategy(model, torch.optim.SGD(model.parameters(), lr=0.1), plugins=[Watch()], train_mb_size=4,
                  train_epochs=2, device="cpu",
                  loader_options={"num_workers": 2, "persistent_workers": True}) as strategy:
        strategy.train(Experience(0, files))
        assert seen == [2, 2]  # the experience's two workers, kept from one epoch to the next
        assert multiprocessing.active_children() == []  # stopped with the experience
        strategy.eval([Experience(0, files)])
        assert multiprocessing.active_children() == []


def test_a_strategy_sets_its_batch_reader_options_only_while_it_trains_or_evaluates(make_benchmark, reader_options):
    """A strategy that is never closed (a notebook) leaves no options behind for other strategies' buffers."""
    import clkernel

    seen = []

    class Look:
        @clkernel.hookimpl
        def after_training_exp(self, state):
            current = set_batch_reader_options(None)  # returns the options in force, which are put back
            set_batch_reader_options(current)
            seen.append(current)

    bench = make_benchmark(n_exp=2)
    model = torch.nn.Linear(4, 4)
    strategy = clkernel.Strategy(model, torch.optim.SGD(model.parameters(), lr=0.1), plugins=[Look()],
                                 loader_options={"pin_memory": False}, device="cpu")
    strategy.train(bench.train_stream)
    strategy.eval(bench.test_stream)
    assert seen == [{"pin_memory": False}] * 2
    assert set_batch_reader_options(None) == {}  # after train() and eval(), without close()
