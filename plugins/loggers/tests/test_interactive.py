"""The interactive logger: plain lines when the output is not a terminal, tqdm bars otherwise."""

from __future__ import annotations

import io
import re

import pytest

import clkernel
from clkernel_loggers import InteractiveLogger


class EpochRecorder:
    """The epoch's mean loss and accuracy, computed independently of the logger."""

    name = "epoch-recorder"

    def __init__(self):
        self.loss = self.right = self.n = 0.0
        self.epochs: list[tuple[float, float]] = []

    @clkernel.hookimpl
    def before_training_epoch(self, state):
        self.loss = self.right = self.n = 0.0

    @clkernel.hookimpl
    def after_training_iteration(self, state):
        n = len(state.mb[1])
        self.loss += float(state.loss.detach()) * n
        self.right += float((state.mb_output.argmax(-1) == state.mb[1]).sum())
        self.n += n

    @clkernel.hookimpl
    def after_training_epoch(self, state):
        self.epochs.append((self.loss / self.n, self.right / self.n))


def test_plain_lines_when_not_a_terminal(tiny):
    out = io.StringIO()
    logger = InteractiveLogger(file=out)
    assert not logger.bars  # a StringIO is not a terminal
    recorder = EpochRecorder()
    run = tiny.make_run(logger, recorder, epochs=2)
    tiny.run_all(run)
    text = out.getvalue()
    epoch_lines = re.findall(r"train exp (\d) epoch (\d)/2: loss ([0-9.]+) acc ([0-9.]+) \((\d+) it", text)
    assert len(epoch_lines) == 6
    for (_, _, loss, acc, iters), (exp_loss, exp_acc) in zip(epoch_lines, recorder.epochs):
        assert float(loss) == pytest.approx(exp_loss, abs=1e-4) and float(acc) == pytest.approx(exp_acc, abs=1e-4)
        assert iters == "3"  # 40 samples, minibatches of 16
    assert text.count("== exp ") == 3
    assert "loss_epoch 1.0000 acc_epoch 0.5000" in text
    eval_lines = [line for line in text.splitlines() if line.startswith("-- eval test")]
    assert len(eval_lines) == 3
    assert "acc_stream" in eval_lines[-1] and "acc per exp: 0.500 0.710 0.920" in eval_lines[-1]
    assert "\r" not in text  # no bars


def test_bars_in_a_terminal(tiny):
    out = io.StringIO()
    logger = InteractiveLogger(file=out, bars=True)
    run = tiny.make_run(logger, n_exps=1)
    tiny.run_all(run)
    logger.close()
    text = out.getvalue()
    assert "\r" in text and "train exp 0 epoch 1/1" in text
    assert "it/s" in text or "s/it" in text
    assert "eval test exp 0" in text
    assert "-- eval test" in text  # the summary line survives the bar


def test_bad_stream_option():
    with pytest.raises(ValueError, match="stream must be 'stderr' or 'stdout'"):
        InteractiveLogger(stream="terminal")


def test_eval_without_metrics_uses_its_own_running_values(tmp_path):
    import torch

    from clkernel import CLDataset, Experience, Stream

    torch.manual_seed(0)
    data = CLDataset.from_tensors(torch.randn(30, 3), torch.arange(30) % 3)
    model = torch.nn.Linear(3, 3)
    out = io.StringIO()
    strategy = clkernel.Naive(model, torch.optim.SGD(model.parameters(), lr=0.1),
                              plugins=[InteractiveLogger(file=out)], device="cpu", eval_mb_size=7)
    strategy.eval(Stream("test", [Experience(0, data)]))
    logits = model(data.get_batch(torch.arange(30))[0])
    acc = float((logits.argmax(-1) == data.targets).float().mean())
    loss = float(torch.nn.functional.cross_entropy(logits, data.targets).detach())
    line = out.getvalue().strip()
    assert line.startswith("-- eval test") and f"loss {loss:.4f} acc {acc:.4f}" in line
