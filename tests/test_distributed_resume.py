"""``torchrun -m clkernel run`` killed and resumed: a killed rank ends the job with an error, never a hang, and
``--resume`` finishes the run as if nothing happened. (Its own module, so that it runs beside the others.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from clkernel.testing import torchrun

def _results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def test_a_killed_rank_ends_the_job_and_the_run_resumes_to_the_uninterrupted_result(tmp_path):
    """``torchrun -m clkernel run``: kill rank 1 after a checkpoint, the job fails (no hang); ``--resume`` on
    two ranks again ends where an uninterrupted two-rank run ends."""
    command = ["-m", "clkernel", "run", "--benchmark", "split-digits", "--epochs", "2", "--mb-size", "8",
               "--lr", "0.05", "--logger", "report:plots=false", "--checkpoint-every", "25"]
    whole = torchrun(*command, "--output", "whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]

    launcher = torchrun(*command, "--output", "killed", cwd=tmp_path, popen=True)
    try:
        deadline = time.monotonic() + 180
        while not list((tmp_path / "killed" / "checkpoints").glob("checkpoint-*.pt")):
            assert launcher.poll() is None, launcher.communicate()[1][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        workers = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()
        ranks = {}
        for pid in workers:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            rank = next((v.split(b"=")[1] for v in environ if v.startswith(b"RANK=")), None)
            if rank is not None:
                ranks[int(rank)] = int(pid)
        os.kill(ranks[1], signal.SIGKILL)
        _, err = launcher.communicate(timeout=120)  # torchrun ends the other rank: no hang
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    assert "SIGKILL" in err or "Signal 9" in err or "exitcode" in err.lower(), err[-2000:]

    resumed = torchrun("-m", "clkernel", "run", "--resume", "killed", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    done, expected = _results(tmp_path / "killed"), _results(tmp_path / "whole")
    assert done["status"] == "completed"
    final = {k: v for k, v in done["final_metrics"].items() if k.startswith(("acc_", "loss_"))}
    assert final and final == pytest.approx({k: expected["final_metrics"][k] for k in final}, abs=1e-6)
    assert not list(tmp_path.glob("*/checkpoints/*.tmp*"))
