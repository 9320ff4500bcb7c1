"""Distributed runs (DDP on gloo, CPU), launched for real with ``torchrun``: what one process computes, every rank
computes; a failing or killed rank ends the job with an error, never a hang; a killed job resumes.

Each launch starts two Python processes that import torch (several seconds on a loaded machine): the tests keep
to a few launches, each running several scenarios.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from clkernel.testing import torchrun

#: What torchrun gives each process, for the one-process runs compared with them.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CLKERNEL_LOG_LEVEL": "warning"}


SCENARIOS = textwrap.dedent('''
    """Scenarios of one run: on two ranks under torchrun (global minibatch 2 x mb), or in one process (mb x 2)."""
    import json, os, sys
    import torch, torch.distributed as dist
    import clkernel
    from clkernel import CLDataset, Experience, Strategy, hookimpl
    from clkernel_replay import Replay

    out, mb, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]  # mode: one, two (ranks), back (to one process)
    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0

    def build(plugins, model_name="simple-mlp", bench_options=None, **strategy_options):
        torch.manual_seed(0)
        bench = clkernel.load("benchmark", "split-digits", seed=0, **(bench_options or {}))
        model = clkernel.load("model", model_name, num_classes=10, input_size=64)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        strategy = Strategy(model, optimizer, plugins=[*plugins, clkernel.load("metric", "default")],
                            train_mb_size=mb, eval_mb_size=50, device="cpu", generator=torch.Generator().manual_seed(1),
                            **strategy_options)
        return strategy, bench

    def numbers(results):
        return {k: float(v) for k, v in results.items() if isinstance(v, (int, float)) or
                (isinstance(v, torch.Tensor) and v.numel() == 1)}

    def inside_an_experience(folder):
        """The first checkpoint in ``folder`` taken inside a training experience."""
        for path in sorted(os.listdir(folder)):
            if clkernel.read_checkpoint(os.path.join(folder, path))[0]["position"]["stage"] == "train":
                return os.path.join(folder, path)

    report = {}
    if mode != "one":  # resume the other world size's naive run from inside an experience
        other = os.path.join(os.path.dirname(out), "two" if mode == "back" else "one", "checkpoints")
        strategy, bench = build([])
        report["resumed"] = numbers(clkernel.run(strategy, bench, resume_from=inside_an_experience(other)))
        if mode == "back":
            with open(os.path.join(out, "rank0.json"), "w") as f:
                json.dump(report, f)
            sys.exit()
    for name, plugins in (("naive", []), ("replay", [Replay(mem_size=100, seed=0)])):
        checkpoint = clkernel.Checkpointer(os.path.join(out, "checkpoints"), every=25, keep=100)
        strategy, bench = build(plugins, checkpoint=checkpoint if name == "naive" else None)
        report[name] = numbers(clkernel.run(strategy, bench))
        report[name + "_checksum"] = float(sum(p.double().sum() for p in strategy.state.model.parameters()))

    # a multi-head model grows a head per task: DDP is built again after each adaptation; an experience of an
    # odd number of samples gives the ranks uneven shards (padded), evaluation uneven counts (no padding)
    strategy, bench = build([], "mt-simple-mlp", {"return_task_id": True})
    odd = [Experience(e.index, e.dataset.subset(torch.arange(len(e.dataset) - (1 - len(e.dataset) % 2))),
                      e.classes, e.task_labels) for e in bench.train_stream]
    with strategy:
        strategy.train(odd[:2])
        report["multihead"] = numbers(strategy.eval(odd[:2]))

    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)
    if distributed:
        dist.destroy_process_group()
''')

FAILING_RANK = textwrap.dedent('''
    import torch, torch.distributed as dist
    import clkernel
    from clkernel import Strategy, hookimpl

    dist.init_process_group("gloo")

    class FailsOnRankOne:
        @hookimpl
        def after_training_iteration(self, state):
            if state.rank == 1 and state.iteration == 3:
                raise RuntimeError("rank one gives up at iteration 3")

    torch.manual_seed(0)
    bench = clkernel.load("benchmark", "split-digits", seed=0)
    model = clkernel.load("model", "simple-mlp", num_classes=10, input_size=64)
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.05), plugins=[FailsOnRankOne()],
                        train_mb_size=8, device="cpu")
    clkernel.run(strategy, bench)
''')


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenarios")
    script = folder / "scenarios.py"
    script.write_text(SCENARIOS)
    for name in ("one", "two", "back"):
        (folder / name).mkdir()
    one = subprocess.run([sys.executable, str(script), str(folder / "one"), "32", "one"], env=ENV,
                         capture_output=True, text=True, timeout=240)
    assert one.returncode == 0, one.stderr[-4000:]
    two = torchrun(str(script), str(folder / "two"), "16", "two")
    assert two.returncode == 0, two.stderr[-4000:]
    back = subprocess.run([sys.executable, str(script), str(folder / "back"), "32", "back"], env=ENV,
                          capture_output=True, text=True, timeout=240)
    assert back.returncode == 0, back.stderr[-4000:]
    read = lambda path: json.loads(path.read_text())  # noqa: E731
    return {"one": read(folder / "one" / "rank0.json"), "rank0": read(folder / "two" / "rank0.json"),
            "rank1": read(folder / "two" / "rank1.json"), "back": read(folder / "back" / "rank0.json")}


def _reduced(metrics: dict) -> dict:
    """The metrics reduced over ranks: all but the running values, which each rank shows for its own shard."""
    return {k: v for k, v in metrics.items() if "_running_" not in k}


@pytest.mark.parametrize("name", ["naive", "replay"])
def test_two_ranks_reach_one_process_accuracy_and_agree(scenarios, name):
    one, rank0, rank1 = (_reduced(scenarios[who][name]) for who in ("one", "rank0", "rank1"))
    assert rank0 == rank1  # every rank ends with the same metric values
    # the same global minibatches in the same order: only the padding of the last one and the order of the
    # gradient sums differ from one process
    assert abs(rank0["acc_stream/eval/test"] - one["acc_stream/eval/test"]) <= 0.01
    assert rank0["acc_exp/eval/test/exp004"] > 0.8  # it learned (50% is chance on the last experience)
    assert scenarios["rank0"][name + "_checksum"] == scenarios["rank1"][name + "_checksum"]


def test_a_growing_model_with_uneven_shards_trains_and_evaluates_alike_on_every_rank(scenarios):
    assert _reduced(scenarios["rank0"]["multihead"]) == _reduced(scenarios["rank1"]["multihead"])
    assert scenarios["rank0"]["multihead"]["acc_stream/eval/eval"] > 0.9  # two tasks of two classes each


def test_a_checkpoint_resumes_on_another_number_of_processes(scenarios):
    """A one-process checkpoint taken inside an experience resumes on two ranks, and a two-rank one in one
    process, with the same global minibatch: both end where an uninterrupted run ends."""
    one = _reduced(scenarios["one"]["naive"])
    for resumed in (scenarios["rank0"]["resumed"], scenarios["rank1"]["resumed"], scenarios["back"]["resumed"]):
        resumed = _reduced(resumed)
        assert abs(resumed["acc_stream/eval/test"] - one["acc_stream/eval/test"]) <= 0.01
        assert resumed["acc_exp/eval/test/exp004"] > 0.8
    assert _reduced(scenarios["rank0"]["resumed"]) == _reduced(scenarios["rank1"]["resumed"])


def test_a_rank_that_raises_ends_the_job_with_its_error(tmp_path):
    script = tmp_path / "failing.py"
    script.write_text(FAILING_RANK)
    start = time.monotonic()
    result = torchrun(str(script), timeout=180)
    assert result.returncode != 0
    assert "rank one gives up at iteration 3" in result.stderr
    assert "'failsonrankone' failed in event 'after_training_iteration'" in result.stderr.lower()
    assert time.monotonic() - start < 120


def test_a_plugin_that_cannot_run_distributed_is_refused_by_name_and_leaves_nothing(tmp_path):
    result = torchrun("-m", "clkernel", "run", "--benchmark", "split-digits", "--plugin", "cope", "--output", "run",
                      cwd=tmp_path, timeout=180)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "clkernel run: error:" in line]
    assert lines and all("plugin 'cope' cannot run on several processes" in line for line in lines), result.stderr
    assert "clkernel/cli.py" not in result.stderr  # no traceback of ours (torchrun prints its own)
    assert not (tmp_path / "run").exists()
