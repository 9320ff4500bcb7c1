"""Start-up time of the ``clkernel`` command, as whole processes.

* The listing subcommands (target: < 0.5 s each; none imports torch).
* ``clkernel run`` (the default main job: split-digits, simple-mlp, the default metrics and loggers) until its
  first minibatch: the whole command line (registry, configuration, components, run folder, strategy) with
  ``clkernel.run`` replaced by an exit; against a plain script that imports torch and builds a model and its SGD
  optimizer (whose construction imports ``torch._dynamo``, as every torch training script pays). Prints the
  ratio (issue 18: the whole process within 1.15x of a plain loop's) and the heavy optional modules the run
  imported before training (none expected: torchvision, matplotlib, tensorboard).

Each command runs as a fresh process, interleaved round by round with a bare ``python -c pass`` (the
interpreter's own start-up, the floor), and with ``python -c "import torch"`` (what importing torch alone
costs); prints the median wall time of each and whether torch was imported.

    .venv/bin/python tests/bench/bench_startup.py [rounds]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    "clkernel --help": [sys.executable, "-m", "clkernel.cli", "--help"],
    "clkernel hooks": [sys.executable, "-m", "clkernel.cli", "hooks"],
    "clkernel plugins": [sys.executable, "-m", "clkernel.cli", "plugins"],
    "clkernel show plugin replay": [sys.executable, "-m", "clkernel.cli", "show", "plugin", "replay"],
    "plain: torch, model, SGD": [sys.executable, "-c", "import torch; m = torch.nn.Sequential(torch.nn.Flatten(), "
                                 "torch.nn.Linear(64, 10)); torch.optim.SGD(m.parameters(), lr=0.01)"],
}
HEAVY = ("torchvision", "matplotlib", "tensorboard")
# The default `clkernel run` up to its first minibatch: clkernel.run (what trains) replaced by an exit.
PROBE = f"""
import os, sys
import clkernel.cli, clkernel.loop
def stop(strategy, benchmark, eval_streams=()):
    print("heavy:", ",".join(m for m in {HEAVY!r} if m in sys.modules) or "none", flush=True)
    os._exit(0)
clkernel.loop.run = stop
sys.exit(clkernel.cli.main(["run", "--output", sys.argv[1]]))
"""


def imports_torch(command: list[str]) -> bool:
    """Whether the command imports torch (read from ``-X importtime``)."""
    out = subprocess.run([command[0], "-X", "importtime", *command[1:]], capture_output=True, text=True)
    return any(line.rstrip().endswith(("| torch", "|   torch")) or line.split("|")[-1].strip() == "torch"
               for line in out.stderr.splitlines())


def main(rounds: int = 7) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        probe = os.path.join(tmp, "probe.py")
        with open(probe, "w") as f:
            f.write(PROBE)
        commands = {**COMMANDS, "clkernel run, until training": [sys.executable, probe, os.path.join(tmp, "runs")]}
        times: dict[str, list[float]] = {name: [] for name in commands}
        heavy = ""
        for i in range(rounds):
            for name, command in commands.items():
                if name.startswith("clkernel run"):  # a fresh output folder: a run never reuses one
                    command = [*command[:-1], os.path.join(tmp, f"runs{i}")]
                start = time.perf_counter()
                out = subprocess.run(command, capture_output=True, check=True, text=True).stdout
                times[name].append(time.perf_counter() - start)
                heavy = out.strip().splitlines()[-1] if name.startswith("clkernel run") else heavy
        print(f"median of {rounds} interleaved runs, whole process")
        for name, values in times.items():
            torch_flag = "imports torch" if imports_torch(commands[name]) else "no torch"
            print(f"  {name:30s} {statistics.median(values):6.3f} s   ({torch_flag})")
    ratio = statistics.median(times["clkernel run, until training"]) / statistics.median(
        times["plain: torch, model, SGD"])
    print(f"clkernel run until training / plain script: {ratio:.3f} (target <= 1.15); {heavy} imported")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7)
