"""Start-up time of the ``clkernel`` command's listing subcommands, as whole processes (target: < 0.5 s each).

Each command runs as a fresh process, interleaved round by round with a bare ``python -c pass`` (the
interpreter's own start-up, the floor), and with ``python -c "import torch"`` (what importing torch alone
costs); prints the median wall time of each and whether torch was imported.

    .venv/bin/python tests/bench/bench_startup.py [rounds]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    "clkernel --help": [sys.executable, "-m", "clkernel.cli", "--help"],
    "clkernel hooks": [sys.executable, "-m", "clkernel.cli", "hooks"],
    "clkernel plugins": [sys.executable, "-m", "clkernel.cli", "plugins"],
    "clkernel show plugin replay": [sys.executable, "-m", "clkernel.cli", "show", "plugin", "replay"],
}


def imports_torch(command: list[str]) -> bool:
    """Whether the command imports torch (read from ``-X importtime``)."""
    out = subprocess.run([command[0], "-X", "importtime", *command[1:]], capture_output=True, text=True)
    return any(line.rstrip().endswith(("| torch", "|   torch")) or line.split("|")[-1].strip() == "torch"
               for line in out.stderr.splitlines())


def main(rounds: int = 7) -> None:
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(rounds):
        for name, command in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run(command, capture_output=True, check=True)
            times[name].append(time.perf_counter() - start)
    print(f"median of {rounds} interleaved runs, whole process")
    for name, values in times.items():
        torch_flag = "imports torch" if imports_torch(COMMANDS[name]) else "no torch"
        print(f"  {name:30s} {statistics.median(values):6.3f} s   ({torch_flag})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7)
