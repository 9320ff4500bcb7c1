"""A metric written outside clkernel-metrics (here, from the kernel's public API only) reaches every first-party
logger through ``state.log_metrics``: files, TensorBoard events, the report and the terminal."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
import torch

import clkernel
from clkernel_loggers import (
    CSVLogger, InteractiveLogger, JSONLLogger, ReportLogger, TensorBoardLogger, TextLogger,
)


class LogitMargin:
    """The mean margin between the largest and the second largest logit: ``margin_exp/eval/STREAM/expNNN`` per
    experience and ``margin_stream/eval/STREAM`` per stream; the mean logits per class as a 2-D tensor
    (``logit_mean_stream/eval/STREAM``), and a value named outside the scheme (``third party/samples``)."""

    name = "logit-margin"

    def __init__(self) -> None:
        self.logged: list[tuple[int, str, Any]] = []

    def _log(self, state: Any, values: dict[str, Any]) -> None:
        self.logged.extend((state.iteration, k, v) for k, v in values.items())
        state.log_metrics(values)

    @clkernel.hookimpl
    def before_eval(self, state: Any) -> None:
        self.stream_sum, self.stream_n, self.logits = 0.0, 0, []

    @clkernel.hookimpl
    def before_eval_exp(self, state: Any) -> None:
        self.sum, self.n = 0.0, 0

    @clkernel.hookimpl
    def after_eval_iteration(self, state: Any) -> None:
        top2 = state.mb_output.topk(2, dim=1).values
        self.sum += float((top2[:, 0] - top2[:, 1]).sum())
        self.n += len(state.mb_y)
        self.logits.append(state.mb_output.detach())

    @clkernel.hookimpl
    def after_eval_exp(self, state: Any) -> None:
        self.stream_sum, self.stream_n = self.stream_sum + self.sum, self.stream_n + self.n
        name = clkernel.metric_name("margin", "exp", "eval", state.stream_name, exp=state.experience.index)
        self._log(state, {name: self.sum / self.n})

    @clkernel.hookimpl
    def after_eval(self, state: Any) -> None:
        stream = state.stream_name
        self._log(state, {clkernel.metric_name("margin", "stream", "eval", stream): self.stream_sum / self.stream_n,
                          clkernel.metric_name("logit_mean", "stream", "eval", stream): torch.cat(self.logits)[:3],
                          "third party/samples": float(self.stream_n)})


def _benchmark() -> clkernel.Benchmark:
    g = torch.Generator().manual_seed(0)

    def stream(name: str, n: int) -> clkernel.Stream:
        x, y = torch.randn(4 * n, 5, generator=g), torch.arange(4 * n) % 4
        data = clkernel.CLDataset.from_tensors(x, y)
        return clkernel.Stream(name, [clkernel.Experience(i, data.class_subset([2 * i, 2 * i + 1])) for i in range(2)])

    return clkernel.Benchmark({"train": stream("train", 20), "test": stream("test", 10)}, name="tiny")


def test_a_third_party_metric_reaches_every_first_party_logger(tmp_path):
    out = io.StringIO()
    loggers = [CSVLogger(tmp_path), JSONLLogger(tmp_path), TextLogger(tmp_path), TensorBoardLogger(tmp_path),
               ReportLogger(tmp_path, plots=False), InteractiveLogger(file=out)]
    metric = LogitMargin()
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 4)
    strategy = clkernel.Naive(model, torch.optim.SGD(model.parameters(), lr=0.1), plugins=[*loggers, metric],
                              train_mb_size=8, device="cpu", generator=torch.Generator().manual_seed(0))
    clkernel.run(strategy, _benchmark())
    files = strategy.close()  # idempotent: the files of the run
    scalars = [(step, name, v) for step, name, v in metric.logged if isinstance(v, float)]
    last = {name: v for _, name, v in metric.logged}
    assert len(scalars) == 2 * (2 + 1 + 1)  # two evaluations: two experiences, the stream, the free-form value

    # CSV: scheme names by phase with their parts, the free-form name in metrics_other.csv
    assert {tmp_path / "metrics_eval.csv", tmp_path / "metrics_other.csv"} <= set(files)
    with open(tmp_path / "metrics_eval.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted((int(r["step"]), r["name"], float(r["value"])) for r in rows) == sorted(
        s for s in scalars if s[1] != "third party/samples")
    row = next(r for r in rows if r["name"] == "margin_exp/eval/test/exp001")
    assert (row["metric"], row["stream"], row["experience"]) == ("margin_exp", "test", "1")
    with open(tmp_path / "metrics_other.csv", newline="") as f:
        assert [(r["name"], float(r["value"])) for r in csv.DictReader(f)] == [("third party/samples", 40.0)] * 2

    # JSON lines: every value, the tensor as nested lists
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["name"]) for r in records] == [(s, n) for s, n, _ in metric.logged]
    assert records[-2]["value"] == last["logit_mean_stream/eval/test"].tolist()  # JSON round-trips floats exactly

    # text
    text = (tmp_path / "log.txt").read_text()
    assert f"margin_stream/eval/test={last['margin_stream/eval/test']:.4f}" in text
    assert "logit_mean_stream/eval/test =\n" in text

    # TensorBoard, read back
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert [p for p in files if p.parent == tmp_path / "tensorboard"]
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    for name in ("margin_exp/eval/test/exp000", "margin_stream/eval/test", "third party/samples"):
        expected = [(s, v) for s, n, v in scalars if n == name]
        assert [(e.step, e.value) for e in acc.Scalars(name)] == [(s, pytest.approx(v, rel=1e-6)) for s, v in expected]
    assert "logit_mean_stream/eval/test" in acc.Tags()["images"]

    # the report
    results = json.loads((tmp_path / "results.json").read_text())
    assert tmp_path / "results.json" in files
    assert results["final_metrics"] == pytest.approx({k: v for k, v in last.items() if isinstance(v, float)})
    assert results["matrices"]["logit_mean_stream/eval/test"] == last["logit_mean_stream/eval/test"].tolist()

    # the terminal: the stream value in each evaluation's line
    eval_lines = [line for line in out.getvalue().splitlines() if line.startswith("-- eval test")]
    assert len(eval_lines) == 2
    assert eval_lines[-1].endswith(f"margin_stream {last['margin_stream/eval/test']:.4f}")
