"""Start-up (issue 18): building the registry and composing the default ``clkernel run`` (benchmark, model,
metrics, loggers, strategy: everything before the first minibatch) imports none of the plugins' heavy optional
dependencies; they are imported by the component that needs them, when it needs them (the report's plots, a
TensorBoard logger, a torchvision dataset)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

HEAVY = ("torchvision", "matplotlib", "tensorboard", "torch.utils.tensorboard")

# Runs the real command line, with clkernel.run (what trains) replaced by a probe that reports sys.modules.
PROBE = textwrap.dedent(f"""
    import json, os, sys
    import clkernel
    import clkernel.cli
    import clkernel.loop

    heavy = {HEAVY!r}
    clkernel.registry()
    after_registry = [m for m in heavy if m in sys.modules]

    def probe(strategy, benchmark, eval_streams=()):
        print(json.dumps({{"registry": after_registry, "composed": [m for m in heavy if m in sys.modules],
                          "plugins": [type(p).__name__ for p in strategy.plugins]}}), flush=True)
        os._exit(0)

    clkernel.loop.run = probe
    sys.exit(clkernel.cli.main(["run", "--output", sys.argv[1]]))
""")


def test_registry_and_default_run_import_no_heavy_dependency(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "runs")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["plugins"], "the default run composed no plugin"
    assert seen["registry"] == []
    assert seen["composed"] == []
