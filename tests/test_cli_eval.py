"""``clkernel run`` evaluates the streams it is told to, as often as it is told to, and shows the final accuracy
even when no metric package is installed (computed once at the end, equal to what clkernel-metrics computes)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("clkernel_benchmarks")
pytest.importorskip("clkernel_metrics")

ARGS = ("--benchmark", "split-digits", "--model", "simple-mlp", "--epochs", "2", "--seed", "3",
        "--logger", "jsonl")


def _in_process(cli_main, *args: str) -> int:
    """``clkernel run`` in this process (``cli_main``, tests/conftest.py): what it computes or refuses."""
    return cli_main("--log-format", "json", "run", *args)


def test_eval_streams_and_eval_every_choose_what_is_evaluated_and_when(tmp_path, cli_main):
    assert _in_process(cli_main, *ARGS, "--eval-streams", "train,test", "--eval-every", "1", "--output", "run") == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    streams = {r["name"].rsplit("/", 1)[1] for r in rows if r["name"].startswith("acc_stream/eval/")}
    assert streams == {"train", "test"}
    evaluations = [r for r in rows if r["name"] == "acc_stream/eval/test"]
    # 5 experiences x 2 epochs, evaluated after every epoch: after epoch 1 (eval_every) and at the experience's end
    assert len(evaluations) == 10


def test_a_stream_the_benchmark_lacks_is_a_usage_error_and_nothing_is_created(tmp_path, cli_main, capsys):
    assert _in_process(cli_main, *ARGS, "--eval-streams", "test,valid", "--output", "run") == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "clkernel run: error: --eval-streams: benchmark split-digits has no stream 'valid'; its streams: train, test"]
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("value, message", [("test,test", "names stream 'test' twice"), (",", "is empty")])
def test_bad_stream_lists_are_usage_errors(tmp_path, cli_main, capsys, value, message):
    assert _in_process(cli_main, *ARGS, "--eval-streams", value) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())


def test_without_a_metric_package_the_console_still_shows_the_final_accuracy(tmp_path, cli_main, capsys,
                                                                            monkeypatch):
    from clkernel.discovery import reset_registry

    assert _in_process(cli_main, *ARGS, "--output", "with") == 0
    capsys.readouterr()
    monkeypatch.setenv("CLKERNEL_DISABLE_PLUGINS", "clkernel-metrics")
    reset_registry()  # the registry is built again from the entry points, without the metrics package
    try:
        code = _in_process(cli_main, *ARGS, "--output", "without")
    finally:
        monkeypatch.delenv("CLKERNEL_DISABLE_PLUGINS")
        reset_registry()
    bare_out, bare_err = capsys.readouterr()
    assert code == 0, bare_err
    assert "pip install clkernel-metrics" in bare_err
    line = next(x for x in bare_out.splitlines() if x.startswith("final results: "))
    printed = json.loads(line.removeprefix("final results: "))["accuracy/test"]
    rows = [json.loads(line) for line in (tmp_path / "with" / "metrics.jsonl").read_text().splitlines()]
    final = [r["value"] for r in rows if r["name"] == "acc_stream/eval/test"][-1]
    assert 0.1 < final and printed == pytest.approx(final, abs=1e-4)
