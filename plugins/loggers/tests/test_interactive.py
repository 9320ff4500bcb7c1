"""The interactive logger: it shows the values it receives (plain lines when the output is not a terminal, tqdm
bars otherwise) and computes nothing itself."""

from __future__ import annotations

import io
import re

import pytest
import torch

import clkernel
from clkernel_loggers import InteractiveLogger


def test_plain_lines_show_the_values_received(tiny):
    out = io.StringIO()
    logger = InteractiveLogger(file=out)
    assert not logger.bars  # a StringIO is not a terminal
    run = tiny.make_run(logger, epochs=2)
    tiny.run_all(run)
    text = out.getvalue()
    assert "\r" not in text  # no bars

    epoch_lines = re.findall(r"train exp (\d) epoch (\d)/2: loss_epoch ([0-9.]+) acc_epoch ([0-9.]+) \((\d+) it", text)
    expected = [(str(i), str(e + 1), f"{1 / (i + 1):.4f}", f"{0.5 + i / 10:.4f}", "3")
                for i in range(3) for e in range(2)]  # FakeMetrics: loss_epoch 1/(i+1), acc_epoch 0.5+i/10
    assert epoch_lines == expected
    exp_lines = re.findall(r"== exp (\d) trained \(40 samples, 2 epoch\(s\), [0-9.]+ s\): (.*)", text)
    assert exp_lines == [(str(i), f"loss_epoch {1 / (i + 1):.4f} acc_epoch {0.5 + i / 10:.4f}") for i in range(3)]

    eval_lines = [line for line in text.splitlines() if line.startswith("-- eval test")]
    assert len(eval_lines) == 3
    assert re.match(r"-- eval test \(trained 3 exp, [0-9.]+ s\): acc_stream 0\.7100 \| acc per exp: 0\.500 0\.710 "
                    r"0\.920$", eval_lines[-1])
    assert "acc per exp: 0.900 0.710 0.520" in eval_lines[0]


def test_silent_until_a_value_is_received():
    """No metric, no output: the logger computes nothing and shows nothing (other ranks look like this)."""
    from clkernel import CLDataset, Experience, Stream

    data = CLDataset.from_tensors(torch.randn(30, 3), torch.arange(30) % 3)
    model = torch.nn.Linear(3, 3)
    out = io.StringIO()
    stream = Stream("train", [Experience(0, data)])
    with clkernel.Naive(model, torch.optim.SGD(model.parameters(), lr=0.1), device="cpu",
                        plugins=[InteractiveLogger(file=out, bars=True)], train_mb_size=8) as strategy:
        strategy.train(stream, eval_streams=[stream])
    assert out.getvalue() == ""


def test_bars_show_the_last_running_values_received(tiny):
    out = io.StringIO()
    logger = InteractiveLogger(file=out, bars=True)
    run = tiny.make_run(logger, n_exps=1, epochs=2)
    tiny.run_all(run)
    text = out.getvalue()
    assert "\r" in text and "train exp 0 epoch 1/2" in text and "train exp 0 epoch 2/2" in text
    assert "it/s" in text or "s/it" in text
    assert "eval test exp 0" in text
    assert "-- eval test" in text  # the summary line survives the bar
    # the first bar opens on the first running value (iteration 2 of 3) and shows it at once, as received
    loss, acc = [float(v) for step, name, v in run.metrics.logged
                 if step == 2 and name.endswith("_running_epoch/train/train")]
    assert f"loss={loss:.4f}, acc={acc:.4f}" in text
    assert re.search(r"train exp 0 epoch 1/2: +67%\|", text)  # opened at 2 of 3 iterations


def test_bad_stream_option():
    with pytest.raises(ValueError, match="stream must be 'stderr' or 'stdout'"):
        InteractiveLogger(stream="terminal")
