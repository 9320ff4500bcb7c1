"""Faults of the loop (issue 10): module modes a plugin sets hold, the optimizer follows the model's parameter order,
and a non-finite training loss stops training, naming where and what."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest
import structlog
import torch

import clkernel
import clkernel.loop
from clkernel import CLDataset, Experience, Naive, NonFiniteLossError, PluginError, Stream, update_optimizer


def stream(n_exp: int = 2, per_exp: int = 20, *, nan_at: tuple[int, int] | None = None, seed: int = 0) -> Stream:
    """``n_exp`` experiences of ``per_exp`` 3-feature samples, two classes each (experience i: 2i and 2i+1);
    ``nan_at=(experience, sample)`` makes that sample's inputs nan."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_exp * per_exp, 3, generator=g)
    y = (torch.arange(n_exp * per_exp) // per_exp) * 2 + torch.arange(n_exp * per_exp) % 2
    if nan_at is not None:
        x[nan_at[0] * per_exp + nan_at[1]] = float("nan")
    ds = CLDataset.from_tensors(x, y)
    return Stream("train", [Experience(i, ds.subset(range(i * per_exp, (i + 1) * per_exp))) for i in range(n_exp)])


def mlp(seed: int = 0, classes: int = 4) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.ReLU(), torch.nn.Linear(16, classes))


# ------------------------------------------------------------------ 1. a module's mode set by a plugin holds


class ModeRecorder:
    """Freezes ``bn`` in before_training_exp (of the experiences in ``freeze_in``) and records every module's mode
    at each training iteration and each evaluation iteration."""

    name = "mode-recorder"

    def __init__(self, bn: torch.nn.Module | None, freeze_in: tuple[int, ...] = (0,)) -> None:
        self.bn, self.freeze_in = bn, freeze_in
        self.train_modes: list[tuple[int, int, tuple[bool, ...]]] = []
        self.eval_modes: list[tuple[bool, ...]] = []
        self.evals = 0

    @clkernel.hookimpl
    def before_training_exp(self, state: Any) -> None:
        if self.bn is not None and state.experience.index in self.freeze_in:
            self.bn.eval()

    @clkernel.hookimpl
    def after_training_iteration(self, state: Any) -> None:
        self.train_modes.append((state.experience.index, state.epoch,
                                 tuple(m.training for m in state.model.modules())))

    @clkernel.hookimpl
    def after_eval_iteration(self, state: Any) -> None:
        self.eval_modes.append(tuple(m.training for m in state.model.modules()))

    @clkernel.hookimpl
    def after_eval(self, state: Any) -> None:
        self.evals += 1


def bn_model(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 4))


def bn_stats(bn: torch.nn.Module) -> list[torch.Tensor]:
    return [bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()]


def test_a_batchnorm_frozen_in_before_training_exp_stays_frozen_across_epochs_and_periodic_evaluations():
    model = bn_model()
    bn = model[1]
    with torch.no_grad():  # running statistics that the 12 training batches would certainly move
        bn.running_mean.fill_(5.0)
        bn.running_var.fill_(7.0)
    before = bn_stats(bn)
    recorder = ModeRecorder(bn)
    data = stream(n_exp=2)
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.1), plugins=[recorder], train_mb_size=5,
                     train_epochs=3, eval_every=1, device="cpu")
    strategy.train(data[0], eval_streams=[data])
    # 3 epochs of 4 iterations; evaluations after epochs 1 and 2, and after the experience
    assert recorder.evals == 3 and len(recorder.train_modes) == 12
    # modules: Sequential, Linear, BatchNorm1d, ReLU, Linear: only the BatchNorm is frozen, at every iteration
    assert {modes for _, _, modes in recorder.train_modes} == {(True, True, False, True, True)}
    assert {epoch for _, epoch, _ in recorder.train_modes} == {0, 1, 2}
    assert set(recorder.eval_modes) == {(False,) * 5}  # evaluation runs every module in eval mode
    assert all(torch.equal(a, b) for a, b in zip(bn_stats(bn), before)), "a frozen BatchNorm's statistics moved"
    assert [m.training for m in model.modules()] == [True, True, False, True, True]  # restored after the last eval
    # the next experience starts with model.train(): a plugin that does not freeze again gets a training BN
    strategy.train(data[1], eval_streams=[data])
    assert {modes for exp, _, modes in recorder.train_modes if exp == 1} == {(True,) * 5}
    assert not torch.equal(bn.running_mean, before[0])


class FreezingBlock(torch.nn.Module):
    """A dynamic module that freezes its BatchNorm when it adapts to a training experience."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.bn, self.head = torch.nn.Linear(3, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 4)

    def adaptation(self, experience: Experience) -> None:
        if self.training:
            self.bn.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(self.lin(x)).relu())


def test_a_layer_frozen_by_a_dynamic_module_in_adaptation_stays_frozen_for_the_experience():
    torch.manual_seed(0)
    model = FreezingBlock()
    before = bn_stats(model.bn)
    recorder = ModeRecorder(None)
    data = stream(n_exp=1)
    Naive(model, torch.optim.SGD(model.parameters(), lr=0.1), plugins=[recorder], train_mb_size=5, train_epochs=2,
          eval_every=1, device="cpu").train(data, eval_streams=[data])
    assert recorder.evals == 2 and len(recorder.train_modes) == 8
    # modules: FreezingBlock, Linear, BatchNorm1d, Linear
    assert {modes for _, _, modes in recorder.train_modes} == {(True, True, False, True)}
    assert all(torch.equal(a, b) for a, b in zip(bn_stats(model.bn), before))


class FailInEval:
    name = "fail-in-eval"

    @clkernel.hookimpl
    def after_eval_exp(self, state: Any) -> None:
        raise RuntimeError("boom")


@pytest.mark.parametrize("fail", [False, True])
def test_eval_restores_each_modules_own_mode_also_after_a_failure(fail):
    model = bn_model()
    model[1].eval()
    model[3].eval()
    strategy = Naive(model, torch.optim.SGD(model.parameters(), lr=0.1), plugins=[FailInEval()] if fail else [],
                     device="cpu")
    if fail:
        with pytest.raises(PluginError, match="boom"):
            strategy.eval(stream(n_exp=1))
    else:
        strategy.eval(stream(n_exp=1))
    assert [m.training for m in model.modules()] == [True, True, False, True, False]


# ------------------------------------------------------------------ 2. the optimizer follows model.parameters()


class GrowingPairs(torch.nn.Module):
    """A pure-kernel dynamic module whose growth inserts parameters in the middle of ``model.parameters()``: two
    lists of blocks of the same shape (so a mix-up of their optimizer states would go unnoticed by shape)."""

    def __init__(self, features: int = 3) -> None:
        super().__init__()
        self.features = features
        self.weights, self.scales = torch.nn.ParameterList(), torch.nn.ParameterList()
        self._grow()

    def _grow(self) -> None:
        self.weights.append(torch.nn.Parameter(torch.randn(2, self.features) * 0.1))
        self.scales.append(torch.nn.Parameter(torch.ones(2, self.features)))

    def adaptation(self, experience: Experience) -> None:
        while 2 * len(self.weights) <= max(experience.classes):
            self._grow()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ (torch.cat(tuple(self.weights)) * torch.cat(tuple(self.scales))).T


def ids(params: Any) -> list[int]:
    return [id(p) for p in params]


def test_after_growth_the_optimizer_is_in_model_order_and_its_state_round_trips_to_a_fresh_optimizer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), GrowingPairs())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    data = stream(n_exp=2)
    strategy = Naive(model, optimizer, train_mb_size=5, device="cpu")
    strategy.train(data)
    head = model[1]
    assert len(head.weights) == 2
    assert ids(optimizer.param_groups[0]["params"]) == ids(model.parameters())  # w0, w1, s0, s1: not w0, s0, ...
    fresh = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    fresh.load_state_dict(optimizer.state_dict())
    for p in model.parameters():
        assert torch.equal(fresh.state[p]["momentum_buffer"], optimizer.state[p]["momentum_buffer"])


def test_update_optimizer_keeps_each_parameters_group_and_orders_each_group_as_the_model():
    a, b, c = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    model = torch.nn.Sequential(a, b)
    # group 0 holds b, group 1 holds a, each in reverse order; then c arrives and b's bias leaves
    optimizer = torch.optim.SGD([{"params": [b.bias, b.weight]}, {"params": [a.bias, a.weight], "lr": 0.5}],
                                lr=0.1, momentum=0.9)
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    momentum = {id(p): optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()}
    model.append(c)
    b.bias = None
    update_optimizer(optimizer, model)
    assert ids(optimizer.param_groups[0]["params"]) == ids([b.weight, c.weight, c.bias])
    assert ids(optimizer.param_groups[1]["params"]) == ids([a.weight, a.bias])
    assert optimizer.param_groups[1]["lr"] == 0.5
    assert set(ids(optimizer.state)) == set(ids([b.weight, a.weight, a.bias]))  # b.bias's state left with it
    for p in (a.weight, a.bias, b.weight):
        assert torch.equal(optimizer.state[p]["momentum_buffer"], momentum[id(p)])


# ------------------------------------------------------------------ 6. a non-finite loss stops training


class BatchRecorder:
    """Records every training minibatch, where it is, before the forward pass."""

    name = "batches"

    def __init__(self) -> None:
        self.batches: list[tuple[tuple[int, int, int], torch.Tensor, torch.Tensor]] = []

    @clkernel.hookimpl
    def before_forward(self, state: Any) -> None:
        where = (state.experience.index, state.epoch, state.epoch_iteration)
        self.batches.append((where, state.mb_x.clone(), state.mb_y.clone()))


class Term:
    """A loss term: 0 everywhere, except ``value`` at ``at = (experience, epoch, iteration)``."""

    def __init__(self, name: str, at: tuple[int, int, int] | None = None, value: float = math.inf) -> None:
        self.name, self.at, self.value = name, at, value

    @clkernel.hookimpl
    def loss_terms(self, state: Any) -> torch.Tensor:
        here = (state.experience.index, state.epoch, state.epoch_iteration)
        return torch.tensor(self.value if here == self.at else 0.0)


def first_nonfinite(mode: str, check_every: int, monkeypatch: pytest.MonkeyPatch, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, data: Stream, plugins: list[Any]) -> dict[str, Any]:
    """Train 2 epochs of 5 minibatches per experience; return what the error (``mode="raise"``) or the first
    ``nonfinite_loss`` warning (``"warn"``) says, the CPU loss checked every ``check_every`` iterations."""
    monkeypatch.setitem(clkernel.loop.NONFINITE_CHECK_EVERY, "cpu", check_every)
    strategy = Naive(model, optimizer, plugins=plugins, train_mb_size=4, train_epochs=2, device="cpu",
                     on_nonfinite=mode, generator=torch.Generator().manual_seed(1))
    if mode == "raise":
        with pytest.raises(NonFiniteLossError) as info:
            strategy.train(data)
        e = info.value
        assert f"experience {e.experience}, epoch {e.epoch}, iteration {e.iteration}: " in str(e)
        return {"where": (e.experience, e.epoch, e.iteration), "part": e.part, "value": e.value, "message": str(e)}
    with structlog.testing.capture_logs() as logs:
        strategy.train(data)
    warnings = [w for w in logs if w["event"] == "nonfinite_loss"]
    assert warnings and all(w["log_level"] == "warning" for w in warnings)
    # warn trains on: every experience and epoch ran; at most one warning per epoch
    assert strategy.state.experiences_trained == len(data) and strategy.state.iteration == len(data) * 2 * 5
    assert len({(w["experience"], w["epoch"]) for w in warnings}) == len(warnings)
    w = warnings[0]
    return {"where": (w["experience"], w["epoch"], w["iteration"]), "part": w["part"], "value": w["value"]}


MODES = [("raise", 1), ("raise", 2), ("raise", 1024), ("warn", 1), ("warn", 2), ("warn", 1024)]


@pytest.mark.parametrize("mode, check_every", MODES)
def test_nan_momentum_is_reported_at_the_third_iteration(mode, check_every, monkeypatch):
    """By hand: SGD's first step sets the momentum buffer to the gradient (finite); the second multiplies it by
    nan, so every parameter is nan from the third minibatch on: experience 0, epoch 0, iteration 2."""
    model = mlp()
    report = first_nonfinite(mode, check_every, monkeypatch, model,
                             torch.optim.SGD(model.parameters(), lr=0.1, momentum=math.nan), stream(), [])
    assert report["where"] == (0, 0, 2) and report["part"] == "criterion" and math.isnan(report["value"])
    if mode == "raise":
        assert "experience 0, epoch 0, iteration 2: the criterion's loss is nan" in report["message"]


@pytest.mark.parametrize("mode, check_every", MODES)
def test_a_huge_learning_rate_is_reported_at_the_first_nonfinite_loss_of_a_plain_loop(mode, check_every,
                                                                                       monkeypatch):
    model = mlp()
    initial = copy.deepcopy(model)
    batches = BatchRecorder()
    report = first_nonfinite(mode, check_every, monkeypatch, model,
                             torch.optim.SGD(model.parameters(), lr=1e30, momentum=0.9), stream(), [batches])
    # independently: a plain PyTorch loop over the same minibatches, from the same initial weights
    optimizer = torch.optim.SGD(initial.parameters(), lr=1e30, momentum=0.9)
    for where, x, y in batches.batches:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(initial(x), y)
        if not math.isfinite(loss.item()):
            break
        loss.backward()
        optimizer.step()
    else:
        pytest.fail("the plain loop never met a non-finite loss")
    assert where != (0, 0, 0)
    assert report["where"] == where and report["part"] == "criterion" and not math.isfinite(report["value"])


@pytest.mark.parametrize("mode, check_every", MODES)
def test_nan_inputs_are_reported_at_the_first_minibatch_holding_one(mode, check_every, monkeypatch):
    model = mlp()
    batches = BatchRecorder()
    report = first_nonfinite(mode, check_every, monkeypatch, model, torch.optim.SGD(model.parameters(), lr=0.1),
                             stream(nan_at=(1, 7)), [batches])
    first = next(where for where, x, _ in batches.batches if x.isnan().any())
    assert first[0] == 1 and first[1] == 0  # experience 1, its first epoch
    assert report["where"] == first and report["part"] == "criterion" and math.isnan(report["value"])


@pytest.mark.parametrize("mode, check_every", MODES)
def test_an_infinite_loss_term_names_its_plugin(mode, check_every, monkeypatch):
    model = mlp()
    plugins = [Term("calm"), Term("blowup", at=(1, 1, 3)), Term("later", at=(1, 1, 3), value=math.nan)]
    report = first_nonfinite(mode, check_every, monkeypatch, model, torch.optim.SGD(model.parameters(), lr=0.1),
                             stream(), plugins)
    assert report["where"] == (1, 1, 3) and report["part"] == "blowup" and report["value"] == math.inf
    if mode == "raise":
        assert "experience 1, epoch 1, iteration 3: the loss term of plugin 'blowup' is inf" in report["message"]


def test_finite_parts_whose_sum_overflows_name_the_sum(monkeypatch):
    model = mlp()
    report = first_nonfinite("raise", 1, monkeypatch, model, torch.optim.SGD(model.parameters(), lr=0.1), stream(),
                             [Term("big", at=(0, 0, 1), value=3e38), Term("bigger", at=(0, 0, 1), value=3e38)])
    assert report["where"] == (0, 0, 1) and report["part"] == "sum" and report["value"] == math.inf


def test_on_nonfinite_is_checked():
    model = mlp()
    with pytest.raises(ValueError, match="on_nonfinite must be 'raise' or 'warn', got 'ignore'"):
        Naive(model, torch.optim.SGD(model.parameters(), lr=0.1), on_nonfinite="ignore")


# ------------------------------------------------------------------ 6. the command exits 1 with one line

PLUGIN = '''
import torch
import clkernel
from clkernel import Benchmark, CLDataset, Experience, Stream


def toy(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(4).repeat_interleave(8)
    data = CLDataset.from_tensors(torch.randn(len(y), 2, 3, generator=g), y)
    exps = lambda: [Experience(i, data.class_subset([2 * i, 2 * i + 1])) for i in range(2)]
    return Benchmark({"train": Stream("train", exps()), "test": Stream("test", exps())}, name="toy")


def mlp(num_classes: int, input_size: int):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(input_size, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, num_classes))


@clkernel.hookimpl
def register_benchmarks(register):
    register("toy", toy, default=True)


@clkernel.hookimpl
def register_models(register):
    register("mlp", mlp, default=True)
'''


@pytest.fixture
def clkernel_run(run_cli):
    return lambda site, cwd, *args: run_cli(site, cwd, "--output", "out", "--mb-size", "4", *args)


def test_cli_run_with_a_huge_learning_rate_exits_1_with_one_line_naming_where(install_dist, tmp_path, clkernel_run):
    site = install_dist("clk-toy", "clk_toy", PLUGIN, entry_point="toy")
    result = clkernel_run(site, tmp_path, "--lr", "1e30")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "not finite" in line]
    assert len(lines) == 1, result.stderr
    error = json.loads(lines[0])
    assert error["event"] == "run_failed" and error["level"] == "error" and "exception" not in error
    assert error["error"].startswith("the training loss is not finite at experience 0, epoch 0, iteration ")
    assert "the criterion's loss is " in error["error"]


def test_cli_run_on_nonfinite_warn_trains_on_and_exits_0(install_dist, tmp_path, clkernel_run):
    site = install_dist("clk-toy", "clk_toy", PLUGIN, entry_point="toy")
    result = clkernel_run(site, tmp_path, "--lr", "1e30", "--on-nonfinite", "warn")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    warnings = [e for e in events if e["event"] == "nonfinite_loss"]
    assert warnings and warnings[0]["experience"] == 0 and warnings[0]["part"] == "criterion"
    logged = [json.loads(line) for line in (tmp_path / "out" / "events.jsonl").read_text().splitlines()]
    assert logged[-1]["event"] == "run_end"  # every event is in the run folder's file; warnings on stderr too
    bad = clkernel_run(site, tmp_path, "--on-nonfinite", "ignore")
    assert bad.returncode == 2 and "invalid choice: 'ignore'" in bad.stderr


def test_eval_mode_gives_each_module_its_own_mode_back_in_plugins_helpers_too():
    """compute_importances (EWC) and replay's feature extraction run the model themselves: a frozen layer stays
    frozen after them, as after the loop's own evaluation."""
    import clkernel

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    model[1].eval()
    with clkernel.eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert model.training and model[0].training and not model[1].training
    with pytest.raises(RuntimeError):
        with clkernel.eval_mode(model):
            raise RuntimeError("boom")
    assert model.training and not model[1].training

    from clkernel_ewc import compute_importances
    from clkernel_replay.selection import compute_features

    data = clkernel.CLDataset.from_tensors(torch.randn(8, 3), torch.tensor([0, 1] * 4))
    compute_importances(model, data, batch_size=4)
    assert model.training and not model[1].training
    compute_features(data, model=model)
    assert model.training and not model[1].training


def test_a_module_created_by_eval_time_adaptation_evaluates_in_eval_mode():
    class GrowsInEval(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Linear(3, 2)
            self.extra = torch.nn.ModuleList()
            self.seen_training = []

        def adaptation(self, experience):
            if not self.training and not len(self.extra):
                self.extra.append(torch.nn.Dropout(0.5))

        def forward(self, x):
            self.seen_training.append([m.training for m in self.extra])
            out = self.body(x)
            for m in self.extra:
                out = m(out)
            return out

    import clkernel

    model = GrowsInEval()
    data = clkernel.CLDataset.from_tensors(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
    strategy = clkernel.Strategy(model, torch.optim.SGD(model.parameters(), lr=0.1), device="cpu")
    strategy.eval(clkernel.Experience(0, data))
    assert model.seen_training[-1] == [False]
