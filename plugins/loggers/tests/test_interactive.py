"""The interactive logger: it shows the values it receives (plain lines when the output is not a terminal, tqdm
bars otherwise, a summary table at the end) and computes nothing itself."""

from __future__ import annotations

import io
import math
import re
from types import SimpleNamespace

import pytest
import torch
from clkernel_loggers import InteractiveLogger

import clkernel


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def permanent_lines(text: str) -> list[str]:
    """What stays on the screen: each line as its last ``\\r`` left it (tqdm redraws a bar in place and clears
    it with spaces before a line is written); blank lines dropped. The text after the last newline must be
    blank (no bar left drawn)."""
    *lines, tail = text.split("\n")
    assert tail.split("\r")[-1].strip() == "", repr(tail)
    return [kept for line in lines if (kept := line.split("\r")[-1].rstrip())]


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
    assert epoch_lines == expected  # not a terminal: a line per epoch
    exp_lines = re.findall(r"== exp (\d) trained \(40 samples, 2 epoch\(s\), [0-9.]+ s\): (.*)", text)
    assert exp_lines == [(str(i), f"loss_epoch {1 / (i + 1):.4f} acc_epoch {0.5 + i / 10:.4f}") for i in range(3)]

    eval_lines = [line for line in text.splitlines() if line.startswith("-- eval test")]
    assert len(eval_lines) == 3
    assert re.match(r"-- eval test \(trained 3 exp, [0-9.]+ s\): acc_stream 0\.7100 \| acc per exp: 0\.500 0\.710 "
                    r"0\.920$", eval_lines[-1])
    assert "acc per exp: 0.900 0.710 0.520" in eval_lines[0]
    # the summary closes the output: the last row of the accuracy matrix, the last acc_stream
    summary = text.splitlines()[text.splitlines().index(eval_lines[-1]) + 1:]
    assert re.match(r"== results after 3 trained experience\(s\), wall time [0-9.]+ s$", summary[0])
    assert summary[1:] == ["   stream  acc", "   test    0.7100",
                           "   test: accuracy on each experience after the last trained one",
                           "     exp  0       1       2", "     acc  0.5000  0.7100  0.9200"]


def test_in_a_terminal_bars_are_transient_and_a_line_is_kept_per_experience_and_evaluation(tiny):
    out = FakeTerminal()
    logger = InteractiveLogger(file=out, run_dir="runs/demo")
    assert logger.bars  # a terminal: bars by default
    run = tiny.make_run(logger, epochs=3)
    tiny.run_all(run)
    text = out.getvalue()
    assert "train exp 2 epoch 3/3" in text  # the epochs were shown, in their bars
    lines = permanent_lines(text)
    assert not any("epoch 1/3" in line or "epoch 2/3" in line for line in lines)  # no line per epoch
    kinds = [line[:7] for line in lines]
    assert kinds[:6] == ["== exp ", "-- eval"] * 3
    assert re.match(r"== exp 0 trained \(40 samples, 3 epoch\(s\), [0-9.]+ s\): loss_epoch 1\.0000 "
                    r"acc_epoch 0\.5000$", lines[0])
    assert lines[6].startswith("== results after 3 trained experience(s)")
    assert lines[-1] == "== run folder: runs/demo"
    assert len(lines) == 6 + 1 + 2 + 3 + 1  # header, stream table, per-experience table, run folder


def test_the_evaluation_bar_reaches_n_of_n(tiny):
    out = io.StringIO()
    run = tiny.make_run(InteractiveLogger(file=out, bars=True))
    tiny.run_all(run)
    text = out.getvalue()
    # 20 test samples per experience, minibatches of 16: 2 per experience; the bar starts again at each one
    drawn = re.findall(r"eval test exp (\d): +(\d+)%\|[^\r\n]*?\| (\d+)/(\d+) ", text)
    assert drawn and {total for _, _, _, total in drawn} == {"2"}
    done = [exp for exp, pct, n, total in drawn if n == total == "2" and pct == "100"]
    assert done == ["0", "1", "2"] * 3  # every experience of every evaluation ends at 2/2
    assert not any(int(n) > int(total) for _, _, n, total in drawn)


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


def _state(**fields):
    base = {"experiences_trained": 0, "is_training": False, "stream_name": "", "experience": None, "epoch": 0,
            "train_epochs": 1, "epoch_iteration": 0, "dataset": None, "eval_mb_size": 1}
    return SimpleNamespace(**{**base, **fields})


def _evaluate(logger, state, values):
    logger.before_eval(state)
    logger.log_metrics(state, values)
    logger.after_eval(state)


def test_summary_table_shows_the_values_received():
    out = io.StringIO()
    logger = InteractiveLogger(file=out, run_dir="runs/x")
    state = _state(experiences_trained=3, stream_name="test")
    logger.before_run(state)
    nan = math.nan
    _evaluate(logger, state, {  # an earlier evaluation: replaced by the last one
        "acc_stream/eval/test": 0.1, "forgetting_stream/eval/test": 0.9})
    _evaluate(logger, state, {
        "acc_exp/eval/test/exp000": 0.11, "acc_exp/eval/test/exp001": 0.22, "acc_exp/eval/test/exp002": 0.33,
        "acc_stream/eval/test": 0.5, "loss_stream/eval/test": torch.tensor(1.25),
        "forgetting_stream/eval/test": 0.125, "bwt_stream/eval/test": -0.125,
        "acc_stream/eval/test/task000": 0.99,  # per task: not in the table
        "accuracy_matrix_stream/eval/test": torch.tensor([[0.9, nan, nan], [0.5, 0.8, nan], [0.4, 0.6, nan]]),
        "confusion_matrix_stream/eval/test": torch.eye(2)})
    state.stream_name = "valid"  # a second stream, with no matrix: its acc_exp values
    _evaluate(logger, state, {"acc_exp/eval/valid/exp001": 0.7, "acc_exp/eval/valid/exp000": 0.6,
                              "acc_stream/eval/valid": 0.65})
    out.truncate(0)
    out.seek(0)
    logger.after_run(state)
    lines = out.getvalue().splitlines()
    assert re.match(r"== results after 3 trained experience\(s\), wall time [0-9.]+ s$", lines[0])
    assert lines[1:] == [
        "   stream  acc     loss    forgetting  bwt",
        "   test    0.5000  1.2500  0.1250      -0.1250",
        "   valid   0.6500  -       -           -",
        "   test: accuracy on each experience after the last trained one",
        "     exp  0       1       2",  # the matrix's last row, not the acc_exp values
        "     acc  0.4000  0.6000  -",
        "   valid: accuracy on each experience after the last trained one",
        "     exp  0       1",
        "     acc  0.6000  0.7000",
        "== run folder: runs/x"]


def test_summary_wraps_many_experiences_and_shows_long_times():
    out = io.StringIO()
    logger = InteractiveLogger(file=out)
    state = _state(experiences_trained=30, stream_name="test")
    logger._run_start -= 3725  # a run of 1 h 02 min 05 s
    _evaluate(logger, state, {f"acc_exp/eval/test/exp{j:03d}": j / 100 for j in range(30)})
    lines = logger.summary_lines(state)
    assert lines[0] == "== results after 30 trained experience(s), wall time 1 h 02 min 05 s"
    rows = lines[2:]
    assert len(rows) == 6 and max(len(r) for r in rows) <= 100  # wrapped to the width (100 off a terminal)
    assert rows[0].split()[:3] == ["exp", "0", "1"] and rows[5].split()[-1] == "0.2900"
    assert "run folder" not in "\n".join(lines)


def test_plain_lines_when_not_a_terminal_end_with_the_summary(tiny):
    out = io.StringIO()
    run = tiny.make_run(InteractiveLogger(file=out), n_exps=1)
    tiny.run_all(run)
    assert "\r" not in out.getvalue() and "== results after 1 trained experience(s)" in out.getvalue()


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
    assert out.getvalue() == ""  # no bar, no line, no summary


def test_bad_stream_option():
    with pytest.raises(ValueError, match="stream must be 'stderr' or 'stdout'"):
        InteractiveLogger(stream="terminal")
