"""EWC on two processes (torchrun, gloo): every rank ends with the importances one process computes."""

from __future__ import annotations

import textwrap

import pytest
import torch

from clkernel_ewc import compute_importances
from clkernel.testing import torchrun

benchmarks = pytest.importorskip("clkernel_benchmarks", reason="clkernel-benchmarks (plugins/benchmarks) is not "
                                 "installed")

MB = 20  # 291 and 290 training samples in the first two experiences: 15 minibatches each, the last one short

SCRIPT = textwrap.dedent(f"""
    import sys
    import torch
    from clkernel import Strategy
    from clkernel_benchmarks import split_digits
    from clkernel_ewc import EWC

    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    bench = split_digits(n_experiences=5, seed=0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    fisher_batches = []  # forward calls in eval mode: EWC's importance minibatches (no evaluation runs)
    model.register_forward_pre_hook(lambda m, args: None if m.training else fisher_batches.append(len(args[0])))
    ewc = EWC(keep_importance_data=True)
    strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.1), plugins=[ewc], train_mb_size={MB},
                        train_epochs=1, device="cpu", eval_every=-1, generator=torch.Generator().manual_seed(0))
    strategy.train(list(bench.train_stream)[:2])
    torch.save({{"importances": ewc.importances, "saved_params": ewc.saved_params, "batches": fisher_batches}},
               f"{{sys.argv[1]}}/rank{{rank}}.pt")
    torch.distributed.destroy_process_group()
""")



def test_two_ranks_end_with_the_importances_of_one_process(tmp_path):
    script = tmp_path / "ewc_ddp.py"
    script.write_text(SCRIPT)
    done = torchrun(str(script), str(tmp_path), timeout=120)
    assert done.returncode == 0, done.stderr[:3000]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    bench = benchmarks.split_digits(n_experiences=5, seed=0)
    sizes = [len(bench.train_stream[e].dataset) for e in (0, 1)]
    assert sizes == [291, 290]
    # each rank ran its own share of the 15 minibatches of each experience: the 0th, 2nd, ..., 14th (the short
    # one) on rank 0, the others on rank 1
    assert ranks[0]["batches"] == [MB] * 7 + [291 % MB] + [MB] * 7 + [290 % MB]
    assert ranks[1]["batches"] == [MB] * 14
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    for e in (0, 1):
        for name in ranks[0]["saved_params"][e]:
            torch.testing.assert_close(ranks[1]["saved_params"][e][name], ranks[0]["saved_params"][e][name])
            torch.testing.assert_close(ranks[1]["importances"][e][name], ranks[0]["importances"][e][name],
                                       rtol=0, atol=0)
        model.load_state_dict(ranks[0]["saved_params"][e])
        one_process = compute_importances(model, bench.train_stream[e].dataset.train(), batch_size=MB)
        assert set(one_process) == set(ranks[0]["importances"][e])
        for name, f in one_process.items():
            assert float(f.abs().max()) > 0
            torch.testing.assert_close(ranks[0]["importances"][e][name], f, rtol=1e-5, atol=1e-9)
