"""``python -m clkernel``: the ``clkernel`` command, e.g. under ``torchrun --nproc_per_node=N -m clkernel run``."""

import sys

from clkernel.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
