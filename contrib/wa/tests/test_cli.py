"""WA composed with replay through the real ``clkernel`` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_clkernel_run_composes_wa_with_replay(tmp_path):
    clkernel = Path(sys.executable).parent / "clkernel"
    out = tmp_path / "run"
    proc = subprocess.run([str(clkernel), "--log-format", "json", "run", "--benchmark", "split-digits",
                           "--plugin", "replay:mem_size=100", "--plugin", "wa:mem_size=100,temperature=2",
                           "--metric", "accuracy", "--epochs", "1",
                           "--logger", "report:plots=false", "--output", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "completed" and results["experiences_trained"] == 5
    assert 0.0 <= results["final_metrics"]["acc_stream/eval/test"] <= 1.0


def test_bad_option_is_a_usage_error(tmp_path, capsys):
    from clkernel.cli import (  # in-process: one interpreter start per package is enough
        EXIT_USAGE,
        main,
    )

    out = tmp_path / "run"
    code = main(["run", "--benchmark", "split-digits", "--plugin", "wa:kd_lambda=2", "--output", str(out)])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE == 2
    assert "kd_lambda must be a number in [0, 1]" in err and "Traceback" not in err
    assert not out.exists()
