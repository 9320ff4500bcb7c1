"""tests/bench/bench_gpu.py runs: its quick mode on the CPU (tiny sizes) trains Naive, Replay and EWC with
clkernel and with the plain loop, base and with the channels-last plugin, and prints a full table (the amp and
compile variants are left out: bfloat16 convolutions and inductor's compilation take tens of seconds on a CPU;
the plugins' own tests cover them)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

BENCH = Path(__file__).resolve().parent / "bench" / "bench_gpu.py"


def test_quick_mode_on_cpu(capsys):
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--device", "cpu", "--quick", "--channels-last"])
    rows = {(r["variant"], r["method"]): r for r in result["rows"]}
    assert set(rows) == {(v, m) for v in ("base", "channels-last") for m in ("naive", "replay", "ewc")}
    for row in rows.values():
        for key in ("plain_images_per_s", "clkernel_images_per_s", "train_ratio", "eval_ratio"):
            assert math.isfinite(row[key]) and row[key] > 0, (row, key)
    table = capsys.readouterr().out
    assert "| channels-last | ewc |" in table
