"""tests/bench/reproduction_table.py --quick runs every reproduction command and writes one row per method.

The quick run is a smoke test of the commands (one epoch, one seed, a tiny copy of MNIST), not the reproduction:
only that each command runs and yields an accuracy in [0, 1] is checked. It needs the real MNIST files of
``<repo>/../shared/data`` and skips, saying so, without them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()
#: Every package that has a reproduction script: each must have a configuration in the table.
SCRIPTS = sorted([*ROOT.glob("contrib/*/bench/reproduce.py"), *ROOT.glob("plugins/*/bench/bench_literature_*.py")])


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], str]:
    if not (SHARED_DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"real MNIST not found in {SHARED_DATA} (the shared data folder is absent)")
    tmp = tmp_path_factory.mktemp("table")
    proc = subprocess.run([sys.executable, "tests/bench/reproduction_table.py", "--quick",
                           "--data-root", str(SHARED_DATA), "--output", str(tmp / "results.md"),
                           "--json", str(tmp / "results.json")], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((tmp / "results.json").read_text()), (tmp / "results.md").read_text()


def test_every_script_has_a_configuration_and_every_configuration_ran(quick):
    configurations, _ = quick
    assert SCRIPTS and len(configurations) >= len(SCRIPTS)
    assert {c["package"] for c in configurations} == {p.parents[1].name for p in SCRIPTS}
    for c in configurations:
        assert c["returncode"] == 0 and c["quick"], c
        assert c["command"].split()[1].endswith(".py") and "--data-root" in c["command"], c
        assert c["rows"], f"{c['configuration']}: no row"
        for row in c["rows"]:
            assert row["method"] and row["published"], (c["configuration"], row)
            assert row["per_seed"] and all(0 <= v <= 1 for v in row["per_seed"]), (c["configuration"], row)
            assert row["seconds"] >= 0


def test_the_page_has_one_quick_row_per_method_with_its_command(quick):
    configurations, page = quick
    rows = [line for line in page.splitlines() if line.startswith("| ") and not line.startswith("| method ")]
    assert len(rows) == sum(len(c["rows"]) for c in configurations)
    for line in rows:
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        assert len(cells) == 8, line
        value = re.match(r"QUICK (\d+\.\d\d)\b", cells[4])
        assert value and 0 <= float(value[1]) <= 100, line
        assert cells[7].startswith("`") and "--data-root" in cells[7], line
    assert "QUICK run" in page and "NOT the reproduction" in page


def test_every_configuration_has_an_expected_time_for_the_longest_first_order():
    import runpy

    script = runpy.run_path(str(ROOT / "tests" / "bench" / "reproduction_table.py"))
    names = {c.name for c in script["CONFIGURATIONS"]}
    assert set(script["EXPECTED_SECONDS"]) == names
    assert all(seconds > 0 for seconds in script["EXPECTED_SECONDS"].values())
