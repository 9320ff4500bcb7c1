"""MIR on two processes (torchrun, gloo): every rank retrieves what one process retrieves on the global minibatch."""

from __future__ import annotations

import runpy
import textwrap
import types

import pytest
import torch

import clkernel.distributed as dist
from clkernel_mir import MIR
from clkernel.testing import torchrun

SCRIPT = textwrap.dedent("""
    import sys
    import torch
    import clkernel
    from clkernel import CLDataset, Experience, Strategy
    from clkernel_mir import MIR


    class Probe:
        def __init__(self, mir):
            self.mir, self.retrieved = mir, []

        @clkernel.hookimpl
        def after_training_iteration(self, state):
            if self.mir.last_retrieved is not None:
                self.retrieved.append(self.mir.last_retrieved.clone())


    def run(mb_size):
        torch.manual_seed(0)
        centres = 3 * torch.randn(4, 8)
        y = torch.arange(4).repeat_interleave(24)
        x = centres[y] + torch.randn(96, 8)
        # two experiences of 48 samples: 6 global minibatches of 8 each, no padding on 2 ranks of 4
        exps = [Experience(i, CLDataset.from_tensors(x[y // 2 == i], y[y // 2 == i])) for i in (0, 1)]
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
        mir = MIR(mem_size=20, subsample=10, batch_size_mem=4, seed=0)
        probe = Probe(mir)
        strategy = Strategy(model, torch.optim.SGD(model.parameters(), lr=0.1), plugins=[mir, probe],
                            train_mb_size=mb_size, train_epochs=1, device="cpu", eval_every=-1,
                            generator=torch.Generator().manual_seed(0))
        strategy.train(exps)
        return {"retrieved": probe.retrieved, "model": model.state_dict()}


    if __name__ == "__main__":
        torch.distributed.init_process_group("gloo")
        torch.set_num_threads(1)
        torch.save(run(4), f"{sys.argv[1]}/rank{torch.distributed.get_rank()}.pt")
        torch.distributed.destroy_process_group()
""")



def test_two_ranks_retrieve_and_train_as_one_process_on_the_global_minibatch(tmp_path):
    script = tmp_path / "mir_ddp.py"
    script.write_text(SCRIPT)
    done = torchrun(str(script), str(tmp_path), timeout=120)
    assert done.returncode == 0, done.stderr[:3000]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    one = runpy.run_path(str(script), run_name="one_process")["run"](8)  # the global minibatch, in this process
    assert len(one["retrieved"]) == 6  # the second experience's minibatches
    for rank in ranks:
        assert [r.tolist() for r in rank["retrieved"]] == [r.tolist() for r in one["retrieved"]]
        for name, p in one["model"].items():
            torch.testing.assert_close(rank["model"][name], p, rtol=1e-4, atol=1e-5)


def test_a_model_taking_task_labels_is_refused_in_a_distributed_run(monkeypatch):
    # The retrieved samples of old tasks would run through old heads outside the loop's DDP forward pass.
    class TwoHeads(torch.nn.Module):
        takes_task_labels = True

    monkeypatch.setattr(dist, "is_distributed", lambda: True)
    with pytest.raises(ValueError, match="mir: with a model that takes task labels .* run it in one process"):
        MIR(mem_size=4, seed=0).before_training_exp(types.SimpleNamespace(model=TwoHeads()))
