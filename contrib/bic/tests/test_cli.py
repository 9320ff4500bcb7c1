"""BiC composed with replay, run in-process through ``clkernel``'s own ``main``."""

from __future__ import annotations

import json

from clkernel.testing import cli_in_process


def test_clkernel_run_composes_bic_with_replay(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    with cli_in_process() as main:
        code = main("--log-format", "json", "run", "--benchmark", "split-digits",
                    "--plugin", "replay:mem_size=100", "--plugin", "bic:mem_size=100,stage2_epochs=20",
                    "--metric", "accuracy", "--epochs", "1",
                    "--logger", "report:plots=false", "--output", str(out))
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "completed" and results["experiences_trained"] == 5
    assert 0.0 <= results["final_metrics"]["acc_stream/eval/test"] <= 1.0
