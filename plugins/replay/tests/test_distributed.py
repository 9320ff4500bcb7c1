"""Replay buffers on several processes: each rank draws its share of the global replay minibatch (explicit
ranks here), and real two-process launches (torchrun, gloo) keep every buffer the same on every rank."""

from __future__ import annotations


import pytest
import torch

from clkernel import CLDataset
from clkernel_replay import BufferSampler, GreedyClassBalancedBuffer, HerdingSelection, ParametricBuffer
from clkernel.testing import torchrun


def indexed(n: int, tasks: list[int] | None = None) -> CLDataset:
    """n samples whose input is their own position (so a draw shows which positions were read)."""
    t = torch.tensor(tasks) if tasks is not None else 0
    return CLDataset.from_tensors(torch.arange(n).unsqueeze(1), torch.arange(n) % 3, t)


def global_draws(n: int, size: int, draws: int, seed: int) -> list[list[int]]:
    """By hand: one process cycling through shuffled passes of n positions, ``size`` per draw."""
    g = torch.Generator().manual_seed(seed)
    stream = torch.cat([torch.randperm(n, generator=g) for _ in range(-(-size * draws // n))]).tolist()
    return [stream[i * size:(i + 1) * size] for i in range(draws)]


@pytest.mark.parametrize("world_size", [2, 3])
def test_each_rank_reads_its_share_of_the_global_replay_minibatch(world_size):
    n, batch, draws = 10, 3, 5  # 3 x world_size per global draw: passes of 10 end inside draws
    samplers = [BufferSampler(indexed(n), batch, generator=torch.Generator().manual_seed(7), rank=r,
                              world_size=world_size) for r in range(world_size)]
    for expected in global_draws(n, batch * world_size, draws, seed=7):
        read = [s.draw()[0].flatten().tolist() for s in samplers]
        for r in range(world_size):
            assert read[r] == expected[r::world_size]  # batch samples, every world_size-th of the global draw
    # the samplers stay in step: a checkpoint of any rank's orders is every rank's, and one process's with
    # batch x world_size
    one = BufferSampler(indexed(n), batch * world_size, generator=torch.Generator().manual_seed(7))
    for _ in range(draws):
        one.draw()
    for s in samplers:
        assert [o.tolist() for o in s.orders] == [o.tolist() for o in one.orders]


def test_only_the_rank_share_is_read():
    reads: list[int] = []

    class Items(torch.utils.data.Dataset):  # not in memory: per-item reads, recorded
        def __len__(self):
            return 10

        def __getitem__(self, i):
            reads.append(i)
            return torch.tensor([float(i)]), 0

    data = CLDataset.from_dataset(Items(), targets=torch.zeros(10, dtype=torch.long))
    sampler = BufferSampler(data, 3, generator=torch.Generator().manual_seed(1), rank=1, world_size=2)
    x, _, _ = sampler.draw()
    expected = global_draws(10, 6, 1, seed=1)[0][1::2]
    assert sorted(reads) == sorted(expected) and x.flatten().tolist() == expected


def test_task_balanced_balances_the_global_minibatch_and_each_rank_within_one():
    tasks = [0] * 6 + [1] * 4

    def make(size, rank, world):
        return BufferSampler(indexed(10, tasks), size, task_balanced=True, rank=rank, world_size=world,
                             generator=torch.Generator().manual_seed(3))

    ranks, one = [make(3, r, 2) for r in range(2)], make(6, 0, 1)
    for _ in range(4):
        shares = [s.draw()[2] for s in ranks]
        whole = one.draw()[2]
        assert sorted(torch.cat(shares).tolist()) == sorted(whole.tolist()) == [0, 0, 0, 1, 1, 1]
        for share in shares:
            assert len(share) == 3 and {int((share == t).sum()) for t in (0, 1)} == {1, 2}


def test_one_process_is_rank_0_of_1():
    s = BufferSampler(indexed(5), 2, generator=torch.Generator().manual_seed(0))
    assert (s.rank, s.world_size) == (0, 1)


@pytest.mark.parametrize("kwargs, match", [
    ({"rank": 2, "world_size": 2}, r"rank must be an integer in 0\.\.1, got 2"),
    ({"rank": -1, "world_size": 2}, "rank must be"),
    ({"rank": 0, "world_size": 0}, "world_size must be a positive integer"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
])
def test_bad_rank_or_sizes_name_the_culprit(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BufferSampler(indexed(5), **{"batch_size": 2, **kwargs})


# ---------------------------------------------------------------------------------------------- real launches

MEM, BMEM, MB, SEED = 40, 6, 32, 5

SCRIPT = f"""
import sys
import torch
import clkernel
from clkernel import CLDataset, Strategy
from clkernel_benchmarks import split_digits
from clkernel_replay import Cumulative, GDumb, HerdingSelection, Joint, Replay
from clkernel_replay.replay import check_same_on_every_rank

torch.distributed.init_process_group("gloo")
rank = torch.distributed.get_rank()
torch.manual_seed(0)
torch.set_num_threads(1)
bench = split_digits(n_experiences=5, seed=0)
stream = bench.train_stream[:2]


def mlp():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


class Record:
    name = "record"

    def __init__(self, policy=None):
        self.policy, self.replayed, self.samples, self.buffers, self.models = policy, [], [], [], []

    @clkernel.hookimpl
    def before_training_exp(self, state):
        self.samples.append(0)

    @clkernel.hookimpl
    def before_training_iteration(self, state):  # after replay's: the minibatch ends with the replayed samples
        self.samples[-1] += len(state.mb[1])
        if state.experience.index == 1 and len(self.replayed) < 3:
            self.replayed.append(state.mb[0][-{BMEM}:].clone())

    @clkernel.hookimpl
    def after_train_dataset_adaptation(self, state):
        self.record_buffer()

    @clkernel.hookimpl
    def after_training_exp(self, state):
        self.record_buffer()
        self.models.append({{k: v.detach().clone() for k, v in state.model.state_dict().items()}})

    def record_buffer(self):
        if self.policy is not None and self.policy.buffer is not None:
            x = self.policy.buffer.get_batch(torch.arange(len(self.policy.buffer)))[0]
            self.buffers.append((self.policy.state_dict()["origin"], x))


def train(plugins, record):
    model = mlp()
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.1), plugins=[*plugins, record],
                        train_mb_size={MB}, device="cpu", eval_every=-1,
                        generator=torch.Generator().manual_seed(0))
    strategy.train(stream)
    return {{"replayed": record.replayed, "samples": record.samples, "buffers": record.buffers,
             "models": record.models}}


out = {{}}
replay = Replay(mem_size={MEM}, batch_size_mem={BMEM}, storage_policy="herding", seed={SEED})
out["replay"] = train([replay], Record(replay.storage_policy))
gdumb = GDumb(mem_size={MEM}, seed={SEED})
out["gdumb"] = train([gdumb], Record(gdumb.storage_policy))
out["cumulative"] = train([Cumulative()], Record())
out["joint"] = train([Joint()], Record())
try:  # ranks that differ are told so, every one of them
    check_same_on_every_rank("probe", torch.tensor([rank]))
except RuntimeError as e:
    out["mismatch"] = str(e)
check_same_on_every_rank("probe", torch.tensor([7]))
# herding on inputs that differ between ranks: rank r computes rows r, r+2, ..., and every rank gets them all
points = torch.arange(10.0).reshape(5, 2) ** 2
mine = torch.where((torch.arange(5) % 2 == rank)[:, None], points, -1.0)
out["herding"] = HerdingSelection().order(CLDataset.from_tensors(mine, torch.zeros(5, dtype=torch.long)), k=3)
one = CLDataset.from_tensors(points[:1], torch.zeros(1, dtype=torch.long))
out["herding_one"] = HerdingSelection().order(one, k=1)
torch.save(out, f"{{sys.argv[1]}}/rank{{rank}}.pt")
torch.distributed.destroy_process_group()
"""



@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    """What each of two ranks recorded, training replay, GDumb, Cumulative and Joint (one launch for all)."""
    pytest.importorskip("clkernel_benchmarks", reason="clkernel-benchmarks (plugins/benchmarks) is not installed")
    tmp = tmp_path_factory.mktemp("ddp")
    path = tmp / "script.py"
    path.write_text(SCRIPT)
    done = torchrun(str(path), str(tmp), timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def assert_same_buffers(ranks: list[dict]) -> None:
    assert len(ranks[0]["buffers"]) == len(ranks[1]["buffers"]) > 0
    for (origin0, x0), (origin1, x1) in zip(ranks[0]["buffers"], ranks[1]["buffers"]):
        assert torch.equal(origin0, origin1) and torch.equal(x0, x1)


def test_replay_buffers_are_the_same_on_both_ranks_and_the_ranks_draw_halves_of_one_global_draw(ranks):
    from clkernel_benchmarks import split_digits

    ranks = [r["replay"] for r in ranks]
    assert_same_buffers(ranks)
    stream = split_digits(n_experiences=5, seed=0).train_stream
    first = stream[0].dataset
    origin = ranks[0]["buffers"][0][0]
    assert len(origin) == MEM and set(origin[:, 0].tolist()) == {0}  # after experience 0: its samples only
    # herding computed over both ranks' shards keeps what one process keeps with the same model
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    model.load_state_dict(ranks[0]["models"][0])
    one = ParametricBuffer(MEM, groupby="class", selection=HerdingSelection(), seed=SEED)
    one.update(stream[0], model=model)
    assert torch.equal(one.state_dict()["origin"], origin)
    # replay during experience 1: rank r reads positions [r::2] of the global draw of 2 x BMEM (by hand)
    buffer = first.subset(origin[:, 1]).train()
    for step, idx in enumerate(global_draws(MEM, 2 * BMEM, 3, seed=SEED)):
        for r in (0, 1):
            expected = buffer.get_batch(torch.tensor(idx[r::2]))[0]
            assert torch.equal(ranks[r]["replayed"][step], expected)
    # every rank trained on its half of the data plus BMEM replayed samples per minibatch
    for e, n in enumerate(len(exp.dataset) for exp in stream[:2]):
        mine = -(-n // 2)
        assert ranks[0]["samples"][e] == ranks[1]["samples"][e] == mine + (BMEM * -(-mine // MB) if e else 0)


def test_gdumb_buffer_is_the_same_on_both_ranks_and_whole_data_plugins_are_sharded(ranks):
    from clkernel_benchmarks import split_digits

    stream = split_digits(n_experiences=5, seed=0).train_stream
    sizes = [len(exp.dataset) for exp in stream[:2]]
    gdumb = [r["gdumb"] for r in ranks]
    assert_same_buffers(gdumb)
    one = GreedyClassBalancedBuffer(MEM, seed=SEED)
    for e in (0, 1):
        one.update(stream[e])
        assert torch.equal(gdumb[0]["buffers"][2 * e][0], one.state_dict()["origin"])
    # each rank trains on half of what the plugin put in state.dataset (padded to the same count)
    for r in ranks:
        assert r["gdumb"]["samples"] == [MEM // 2, MEM // 2]
        assert r["cumulative"]["samples"] == [-(-sizes[0] // 2), -(-sum(sizes) // 2)]
        # the whole stream (all five experiences: the slice's experiences keep their stream) once, then skipped
        assert r["joint"]["samples"] == [-(-sum(len(exp.dataset) for exp in stream) // 2), 0]


def test_a_buffer_that_differs_between_ranks_is_an_error_on_every_rank(ranks):
    for r in (0, 1):
        assert ranks[r]["mismatch"].startswith(f"probe: the buffer or its generator differs between ranks (rank {r} "
                                               f"of 2)")


def test_feature_based_selection_orders_the_rows_that_every_rank_computed(ranks):
    points = torch.arange(10.0).reshape(5, 2) ** 2  # each rank had the true rows of its shard only
    expected = HerdingSelection().order(CLDataset.from_tensors(points, torch.zeros(5, dtype=torch.long)), k=3)
    for r in (0, 1):
        assert ranks[r]["herding"].tolist() == expected.tolist()
        assert ranks[r]["herding_one"].tolist() == [0]  # fewer samples than ranks: rank 0's features
