"""The ``clkernel`` command: list plugins and events, show a component, run a continual-learning experiment.

Exit codes: 0 done; 2 usage error (bad name, option or value: the message names it and the valid choices; nothing
is created); 1 failure during the run (one line on the console, the traceback in the run folder's
``events.jsonl``); 130 interrupted by Ctrl-C (SIGINT); 143 terminated by SIGTERM. An interrupted or terminated run
is closed first: the plugins' ``after_run`` fires and ``results.json`` says ``interrupted``.

Checkpoints: ``clkernel run`` writes one into ``RUN_DIR/checkpoints`` at the end of every training experience,
every ``--checkpoint-every`` iterations and ``--checkpoint-minutes`` minutes, and when SIGINT or SIGTERM arrives
during a training experience (at the end of the iteration in progress; elsewhere the run ends at once, its last
checkpoint holding all its work); a second signal ends the command at once. ``clkernel run --resume RUN_DIR``
continues a run from its newest checkpoint, with the configuration saved in ``RUN_DIR/config.json``.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import json
import math
import os
import random
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, NoReturn, Sequence

from clkernel.config import RESUME_MAY_CHANGE, RUN_KEYS, UsageError, check_component, flag, resolve_run_config
from clkernel.discovery import FIRST_PARTY, KINDS, RegistryError, registry
from clkernel.hookspecs import (
    EVENTS, REGISTRATION_FREQUENCY, REGISTRATION_HOOKS, SPEC, RegistrationHooks, TrainingEvents, plain_text,
    spec_arguments, spec_summary,
)
from clkernel.log import configure_logging, describe_exception, get_logger

__all__ = ["CONTEXT_PARAMETERS", "EXIT_FAILED", "EXIT_SIGINT", "EXIT_SIGTERM", "EXIT_USAGE", "RUNS_FOLDER", "Terminated",
           "UsageError", "cmd_hooks", "cmd_plugins", "cmd_run", "cmd_show", "main"]

log = get_logger("clkernel")

#: Factory parameters that ``clkernel run`` fills from the run when the user does not set them.
CONTEXT_PARAMETERS = ("num_classes", "input_size", "input_shape", "in_channels", "run_dir", "config", "benchmark",
                      "seed", "device", "dataset_root")

#: Exit codes besides 0.
EXIT_FAILED, EXIT_USAGE, EXIT_SIGINT, EXIT_SIGTERM = 1, 2, 130, 143
#: Where default run folders go: ``runs/<YYYYmmdd-HHMMSS>-<benchmark>[-N]``, relative to the working directory.
RUNS_FOLDER = Path("runs")


class Terminated(KeyboardInterrupt):
    """Raised by ``clkernel run``'s SIGTERM handler: like Ctrl-C, it closes the run (``after_run`` fires, the
    outcome is ``interrupted``), then the command exits with code 143."""


# ---------------------------------------------------------------------- plugins, hooks, show

def cmd_plugins(args: argparse.Namespace) -> int:
    rows = [{"entry_point": s.entry_point, "distribution": s.distribution, "version": s.version,
             "status": s.status, "error": s.error, "components": s.components, "clashes": s.clashes}
            for s in registry().sources]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no clkernel plugins installed (entry-point group clkernel.plugins)")
    for r in rows:
        print(f"{r['entry_point']}  ({r['distribution']} {r['version']})  {r['status']}")
        if r["error"]:
            print(f"    error: {r['error']}")
        for kind, names in r["components"].items():
            print(f"    {kind}s: {', '.join(names)}")
        for clash in r["clashes"]:
            print(f"    clash: {clash}")
    return 0


def _hook_rows() -> list[dict[str, Any]]:
    rows = []
    for name in EVENTS:
        event = SPEC[name]
        rows.append({"name": name, "kind": "training event", "arguments": spec_arguments(TrainingEvents, name),
                     "frequency": event.frequency, "ranks": "rank 0" if event.rank_zero else "every rank",
                     "result": event.result or "ignored", "summary": spec_summary(TrainingEvents, name)})
    for name in REGISTRATION_HOOKS:
        rows.append({"name": name, "kind": "registration hook",
                     "arguments": spec_arguments(RegistrationHooks, name),
                     "frequency": REGISTRATION_FREQUENCY, "ranks": "every rank",
                     "result": "ignored", "summary": spec_summary(RegistrationHooks, name)})
    return rows


def cmd_hooks(args: argparse.Namespace) -> int:
    rows = _hook_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    kind = None
    for r in rows:
        if r["kind"] != kind:
            kind = r["kind"]
            print(f"{kind}s:" if kind == "training event" else f"\n{kind}s:")
        print(f"  {r['name']}({', '.join(r['arguments'])})  [{r['frequency']}; {r['ranks']}; result {r['result']}]")
        print(f"      {r['summary']}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    comp = registry().get(args.kind, args.name)
    print(f"{comp.kind} {comp.name}  (from {comp.source.label()})")
    if comp.summary:
        print(f"  {comp.summary}")
    # the rest of the factory's docstring: what its options mean, in the author's words
    rest = inspect.cleandoc(comp.factory.__doc__ or "").partition("\n\n")[2].strip()
    for line in rest.splitlines():
        print(f"  {line}".rstrip())
    print("options:" if comp.options() else "options: (none)")
    for p in comp.options().values():
        ann = "" if p.annotation is p.empty else f": {getattr(p.annotation, '__name__', p.annotation)}"
        default = "" if p.default is p.empty else f" = {p.default!r}"
        filled = "  (filled by `clkernel run`)" if p.name in CONTEXT_PARAMETERS else ""
        print(f"  {p.name}{ann}{default}{filled}")
    return 0


# ---------------------------------------------------------------------- run

def _build(kind: str, spec: Any, context: dict[str, Any], used: dict[str, str]) -> Any:
    """Build one component, filling context parameters the user left out; record it in ``used``."""
    name, options = check_component(kind, spec)
    comp = registry().get(kind, name)
    for param in comp.options():
        if param in context and param not in options and context[param] is not None:
            options[param] = context[param]
    used[f"{kind}:{name}"] = comp.source.label()
    try:
        return registry().load(kind, name, **options)
    except (ValueError, TypeError, FileNotFoundError) as e:
        message = str(e)
        raise UsageError(message if message.startswith(f"{name}:") else f"{kind} {name!r}: {message}") from e


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy

        numpy.random.seed(seed)
    except ImportError:
        pass


def _default(kind: str, given: Any) -> Any:
    if given is not None:  # an empty name is the user's: parse_options refuses it by name
        return given
    defaults = registry().defaults(kind)
    if not defaults:
        names = registry().available(kind)
        hint = f"choose one of: {', '.join(names)}" if names else \
            f"install one (pip install {' or '.join(sorted(FIRST_PARTY[kind]))})"
        raise UsageError(f"no {kind} given with --{kind} and no installed plugin provides a default {kind}; {hint}")
    return defaults[0]


def _check_output_folder(output: str | None, overwrite: bool) -> None:
    """Refuse, before anything is built, an ``--output`` folder that holds anything, unless ``--overwrite``."""
    if output is None:
        if overwrite:
            raise UsageError("--overwrite applies only with --output DIR (default run folders are always new)")
        return
    path = Path(output)
    if path.is_dir() and not overwrite and any(path.iterdir()):
        raise UsageError(f"--output {output} is not empty; pass --overwrite to write into it (files of the same "
                         f"name are replaced, others are kept), or give a new folder")


def _make_run_folder(output: str | None, benchmark: str, overwrite: bool) -> tuple[Path, list[Path]]:
    """Create the run folder: ``output``, or ``runs/<YYYYmmdd-HHMMSS>-<benchmark>`` made with an exclusive
    ``mkdir`` (``-2``, ``-3``... added on collision), so that runs started together never share a folder.

    :returns: the folder, and the folders this call created (the run folder, then the parents it created), for
        the caller to remove if a later check fails.
    """
    if output is not None:
        path = Path(output)
        new = [p for p in (path, *path.parents) if not os.path.lexists(p)]
        try:
            path.mkdir(parents=True)
            return path, new
        except FileExistsError:
            _check_output_folder(output, overwrite)  # again: another process may have written there since
            return path, []
        except OSError as e:
            raise UsageError(f"--output {output}: cannot create it: {e.strerror or e}") from None
    RUNS_FOLDER.mkdir(parents=True, exist_ok=True)
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', benchmark).strip('_') or 'run'}"
    for n in range(1, 10_000):
        path = RUNS_FOLDER / (stem if n == 1 else f"{stem}-{n}")
        try:
            path.mkdir()
            return path, [path]
        except FileExistsError:
            continue
    raise UsageError(f"cannot find a free run folder name {RUNS_FOLDER / stem}-N")


def _remove_created(created: list[Path]) -> None:
    """Remove the folders this run created (the run folder, then its new parents) while they are empty."""
    for folder in created:
        try:
            folder.rmdir()
        except OSError:
            break


def _resume_command(run_dir: Path) -> str:
    """The command that resumes ``run_dir``: the same ``torchrun`` launch for a run on several processes."""
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    if processes > 1:
        per_node = os.environ.get("LOCAL_WORLD_SIZE", str(processes))
        return f"torchrun --nproc_per_node={per_node} -m clkernel run --resume {run_dir}"
    return f"clkernel run --resume {run_dir}"


def _dry_check(model: Any, model_name: str, benchmark: Any) -> None:
    """One forward pass of the model, in eval mode and without gradients, on the first training sample: a model
    that cannot take the benchmark's inputs, or gives fewer outputs than the benchmark has classes, is a usage
    error, found before anything is created. Skipped for models with dynamic modules (their structure follows
    the experiences)."""
    import torch

    from clkernel.data import iterate_minibatches
    from clkernel.modules import DynamicModule, eval_mode, model_forward

    if any(isinstance(m, DynamicModule) for m in model.modules()):
        return
    x, _, t = next(iter(iterate_minibatches(benchmark.streams["train"][0].dataset.train(), 1, shuffle=False)))
    param = next(model.parameters(), None)
    if param is not None and isinstance(x, torch.Tensor):
        x, t = x.to(param.device), t.to(param.device)
    shape = tuple(x.shape[1:]) if isinstance(x, torch.Tensor) else type(x).__name__
    try:
        with torch.no_grad(), eval_mode(model):
            out = model_forward(model, x, t)
    except Exception as e:  # noqa: BLE001 - any failure here is the model and the data not fitting
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UsageError(f"model {model_name} cannot take the inputs of benchmark {benchmark.name or '(unnamed)'} "
                         f"(one sample of shape {shape}): {first}") from None
    classes = benchmark.num_classes
    if isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[1] < classes:
        raise UsageError(f"model {model_name} gives {out.shape[1]} outputs but the benchmark has {classes} classes"
                         f" (set its num_classes option, or leave it out so that clkernel run fills it)")


def _final_accuracy(strategy: Any, stream: Any) -> float:
    """Top-1 accuracy of the trained model on every sample of ``stream`` (the fallback summary of a run without
    any metric plugin)."""
    import torch

    from clkernel.data import iterate_minibatches
    from clkernel.modules import adapt_model, eval_mode, model_forward

    s, correct, total = strategy.state, 0, 0
    with torch.no_grad(), eval_mode(s.model):
        for exp in stream:
            adapt_model(s.model, exp, device=s.device).eval()  # multi-head models: the head of exp's task
            for x, y, t in iterate_minibatches(exp.dataset.eval(), s.eval_mb_size, shuffle=False):
                out = model_forward(s.model, x.to(s.device), t.to(s.device))
                correct += int((out.argmax(1).cpu() == y).sum())
                total += len(y)
    return round(correct / max(total, 1), 4)


def _needs_run_dir(kind: str, spec: Any) -> bool:
    """Whether the component's factory takes ``run_dir`` and the user left it out: it is built once the run
    folder exists."""
    name, options = check_component(kind, spec)
    return "run_dir" in registry().get(kind, name).options() and "run_dir" not in options


def _missing_warning(kind: str, dist: str, what: str) -> None:
    if registry().available(kind):
        log.warning(f"no_{kind}", message=f"no {kind} given with --{kind} and no installed plugin provides a "
                    f"default {kind} (pip install {dist} for the defaults, or give --{kind} "
                    f"{'/'.join(registry().available(kind))}); {what}")
    else:
        log.warning(f"no_{kind}", message=f"no {kind} installed: pip install {dist}; {what}")


class _Signals:
    """SIGINT and SIGTERM for ``clkernel run``. During start-up a signal is noted and raised at the next
    :meth:`check` (never inside an import or a C++ call). Once the run started (:meth:`start`), the first asks
    the checkpointer for a checkpoint at the end of the iteration in progress, after which the loop raises it; where
    the loop is not inside a training experience it is raised at once. A second signal is raised at once."""

    def __init__(self) -> None:
        self.pending: BaseException | None = None
        self.checkpointer: Any = None
        self.run_dir: Path | None = None
        self.previous: dict[int, Any] = {}

    def install(self) -> None:
        """Start afresh and handle both signals (in the main thread only: elsewhere Python's handlers stay)."""
        self.__init__()  # type: ignore[misc]
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def handle(self, signum: int, frame: Any) -> None:
        exc = Terminated("SIGTERM") if signum == signal.SIGTERM else KeyboardInterrupt()
        first, self.pending = self.pending is None, self.pending or exc
        if not first or (self.checkpointer is not None and not self.checkpointer.request(exc)):
            raise exc

    def check(self) -> None:
        if self.pending is not None:
            raise self.pending

    def start(self, checkpointer: Any) -> None:
        """The run starts: a signal noted since is honoured at the loop's first checkpoint point."""
        self.checkpointer = checkpointer
        if self.pending is not None:
            checkpointer.requested = self.pending


_SIGNALS = _Signals()


def _saved_config(resume: str) -> dict[str, Any]:
    """The configuration saved in a run folder to resume; a UsageError for a folder that cannot be resumed."""
    from clkernel.checkpoint import latest_checkpoint

    where = f"--resume {resume}"
    folder = Path(resume)
    if not folder.is_dir():
        raise UsageError(f"{where}: " + ("no such folder" if not folder.exists() else "not a folder"))
    try:
        saved = json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        raise UsageError(f"{where}: no config.json: not a folder written by clkernel run") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"{where}: config.json cannot be read: {e}") from None
    if not isinstance(saved, dict) or set(saved) - set(RUN_KEYS):
        raise UsageError(f"{where}: config.json is not a clkernel run configuration")
    if latest_checkpoint(folder / "checkpoints") is None:
        raise UsageError(f"{where}: no checkpoint in {folder / 'checkpoints'} (the run ended before its first "
                         f"checkpoint); start it again")
    try:
        status = json.loads((folder / "results.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        status = None
    if status == "completed":
        raise UsageError(f"{where}: the run is completed (results.json); nothing to resume")
    # where the data lie and what runs it belong to the machine, not to the run: resolved again (flags,
    # $CLKERNEL_DATA), except that a saved data folder that exists on this machine stays the default
    root = saved.get("data_root")
    keep = isinstance(root, str) and Path(root).is_dir() and not os.environ.get("CLKERNEL_DATA")
    return {**{k: v for k, v in saved.items() if k != "device" and (k != "data_root" or keep)}, "output": str(folder)}


def _check_unchanged(resume: str, saved: dict[str, Any], config: dict[str, Any], given: set[str]) -> None:
    """Refuse an option given with ``--resume`` whose value differs from the saved run's, unless it may change."""
    for key in sorted(given):
        if key == "output" and Path(config["output"]).resolve() != Path(resume).resolve():
            raise UsageError(f"--output {config['output']} with --resume {resume}: a resumed run writes into its "
                             f"own folder")
        if key not in RESUME_MAY_CHANGE and config[key] != saved.get(key, RUN_KEYS[key]):
            raise UsageError(f"{flag(key)} {json.dumps(config[key])} differs from the resumed run's "
                             f"{json.dumps(saved.get(key, RUN_KEYS[key]))} (--resume {resume}); a resumed run keeps its "
                             f"configuration, except {', '.join(flag(k) for k in RESUME_MAY_CHANGE)}")


def cmd_run(args: argparse.Namespace) -> int:
    """Check everything (config, components, one forward pass), then create the run folder, then run."""
    import torch

    import clkernel
    from clkernel import distributed
    from clkernel.checkpoint import CheckpointError, Checkpointer, atomic_write, latest_checkpoint, load_checkpoint
    from clkernel.dispatch import CompositionError
    from clkernel.loop import NonFiniteLossError, Strategy, run

    _SIGNALS.check()
    resume = getattr(args, "resume", None)
    saved = _saved_config(resume) if resume is not None else None
    given: set[str] = set()
    config = resolve_run_config(args, base=saved, given=given, base_source=resume and
                                f"{Path(resume) / 'config.json'}, the resumed run's configuration")
    overwrite = bool(getattr(args, "overwrite", False))
    if saved is not None:
        _check_unchanged(resume, saved, config, given)
        if overwrite:
            raise UsageError("--overwrite does not go with --resume (a resumed run continues its own files)")
    else:
        _check_output_folder(config["output"], overwrite)
    config["benchmark"] = _default("benchmark", config["benchmark"])
    config["model"] = _default("model", config["model"])
    config["metric"] = config["metric"] or registry().defaults("metric")
    config["logger"] = config["logger"] or registry().defaults("logger")
    device = torch.device(config["device"] or ("cuda" if torch.cuda.is_available() else "cpu"))
    # under torchrun: join the process group (NCCL for GPUs, gloo for --device cpu); nothing in one process
    distributed.init_from_environment(cuda=device.type == "cuda")
    rank = distributed.rank()
    if device.type == "cuda" and distributed.is_distributed():  # each process its own GPU (LOCAL_RANK)
        device = torch.device("cuda", torch.cuda.current_device())
    config["device"] = str(device)

    _seed_everything(config["seed"])
    context: dict[str, Any] = {"config": config, "seed": config["seed"], "device": device,
                               "dataset_root": config["data_root"]}
    used: dict[str, str] = {}
    _SIGNALS.check()
    benchmark = _build("benchmark", config["benchmark"], context, used)
    bench_name = next(k for k in used if k.startswith("benchmark:")).split(":", 1)[1]
    shape = benchmark.input_shape
    context.update(benchmark=benchmark, num_classes=benchmark.num_classes, input_shape=shape,
                   input_size=math.prod(shape), in_channels=shape[0] if shape else 1)
    config["data_root"] = (benchmark.info.get("dataset_root") or config["data_root"]
                           or os.environ.get("CLKERNEL_DATA") or None)
    missing = [n for n in config["eval_streams"] if n not in benchmark.streams]
    if missing:
        raise UsageError(f"--eval-streams: benchmark {bench_name} has no stream {missing[0]!r}; its streams: "
                         f"{', '.join(benchmark.streams)}")
    model = _build("model", config["model"], context, used)
    _dry_check(model, next(k for k in used if k.startswith("model:")).split(":", 1)[1], benchmark)
    context["model"] = model  # plugins that name a part of the model (a feature layer) check it when built
    # plugins and metrics that write into the run folder are built once it exists; the others now
    early: dict[tuple[str, int], Any] = {}
    for kind in ("plugin", "metric"):
        for i, spec in enumerate(config[kind]):
            if not _needs_run_dir(kind, spec):
                early[kind, i] = _build(kind, spec, context, used)
    for spec in config["logger"]:
        check_component("logger", spec)  # names and options checked before the folder is created

    _SIGNALS.check()
    if saved is not None:
        run_dir, created = Path(resume), []
    elif rank == 0:
        run_dir, created = _make_run_folder(config["output"], bench_name, overwrite)
    else:
        run_dir, created = Path("."), []  # rank 0 names it just below; the other ranks create nothing
    run_dir = Path(distributed.broadcast_object(str(run_dir)))
    config["output"] = context["run_dir"] = run_dir
    try:
        built = {kind: [early[kind, i] if (kind, i) in early else _build(kind, spec, context, used)
                        for i, spec in enumerate(config[kind])] for kind in ("plugin", "metric")}
        loggers = [_build("logger", lg, context, used) for lg in config["logger"]]
        _SIGNALS.check()
    except BaseException:
        _remove_created(created)  # a factory refused: leave nothing behind
        raise
    config["output"] = str(run_dir)
    checkpointer = Checkpointer(run_dir / "checkpoints", every=config["checkpoint_every"],
                                minutes=config["checkpoint_minutes"], keep=config["keep_checkpoints"])
    if not config["metric"]:
        _missing_warning("metric", "clkernel-metrics", "the final accuracy is computed once, at the end, and printed here")
    if not config["logger"]:
        _missing_warning("logger", "clkernel-loggers", "nothing is saved: the final results are printed here")
    if config["optimizer"] == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=config["momentum"])
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    try:
        strategy = Strategy(model, optimizer, torch.nn.CrossEntropyLoss(),
                            plugins=[*built["plugin"], *built["metric"], *loggers],
                            train_mb_size=config["mb_size"], train_epochs=config["epochs"],
                            eval_mb_size=config["eval_mb_size"], device=device, eval_every=config["eval_every"],
                            on_nonfinite=config["on_nonfinite"], checkpoint=checkpointer,
                            loader_options={k: config[k] for k in ("num_workers", "pin_memory", "persistent_workers")})
    except CompositionError as e:  # plugins that cannot run together (or not on several processes) are bad input
        _remove_created(created)
        raise UsageError(str(e)) from None
    if saved is not None:  # everything is checked before anything loads: a refused checkpoint changes nothing
        try:
            load_checkpoint(latest_checkpoint(run_dir / "checkpoints"), strategy)  # type: ignore[arg-type]
        except CheckpointError as e:
            raise UsageError(f"--resume {resume}: {e}") from None
    elif rank == 0:
        atomic_write(run_dir / "config.json", lambda f: f.write(
            (json.dumps({k: config[k] for k in RUN_KEYS}, indent=2, default=str) + "\n").encode()))
    if rank == 0:
        configure_logging(args.log_format, log_file=run_dir / "events.jsonl")
    else:  # rank 0 tells the story; another rank shows its warnings and errors
        configure_logging(args.log_format, console_level="warning")
    log.info("run_start", kernel=clkernel.__version__, components=used, seed=config["seed"], device=str(device),
             processes=distributed.world_size(), run_dir=str(run_dir), data_root=config["data_root"], resumed=strategy.resume_position)
    _SIGNALS.run_dir = run_dir
    _SIGNALS.start(checkpointer)
    try:
        results = run(strategy, benchmark, eval_streams=config["eval_streams"])
    except NonFiniteLossError as e:  # diverged: the message says where and what; a traceback would add nothing
        log.error("run_failed", error=str(e), run_dir=str(run_dir))
        return EXIT_FAILED
    files = strategy.close()
    summary = {k: (v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v) for k, v in results.items()
               if isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1)}
    log.info("run_end", run_dir=str(run_dir), results=summary)
    if not config["metric"]:  # no metric computed anything: still show what the run reached
        summary = {f"accuracy/{name}": _final_accuracy(strategy, benchmark.streams[name])
                   for name in config["eval_streams"]}
    if rank != 0:  # rank 0 reports for every rank
        return 0
    if not config["logger"] or not config["metric"]:
        print(f"final results: {json.dumps(summary, default=str)}")
    print(f"run finished; results in {run_dir}")
    for path in files:
        print(f"  {path}")
    return 0


# ---------------------------------------------------------------------- entry point

class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``clkernel run: error: ...``, exit 2, no usage block) and no abbreviated
    options (``--epoch`` is not silently ``--epochs``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.option_names: list[str] = []  # for a did-you-mean on an unknown option
        self.commands: dict[str, _Parser] = {}
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> Any:
        self.option_names += [a for a in args if a.startswith("-")]
        return super().add_argument(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def _parser() -> _Parser:
    parser = _Parser(prog="clkernel", description=plain_text(__doc__.split("\n")[0]))
    parser.add_argument("--version", action="version", version=f"clkernel {_version()}")
    log_format = _Parser(add_help=False)  # accepted before and after the subcommand
    log_format.add_argument("--log-format", choices=("auto", "console", "json"), default=argparse.SUPPRESS,
                            help="structured log format on stderr (default: console in a terminal, else json)")
    parser.add_argument("--log-format", choices=("auto", "console", "json"), default="auto",
                        help="structured log format on stderr (default: console in a terminal, else json)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("plugins", parents=[log_format],
                       help="list installed plugin distributions and what they register")
    p.add_argument("--json", action="store_true", help="print JSON on stdout")
    p = sub.add_parser("hooks", parents=[log_format],
                       help="list the training events in firing order, then the registration hooks")
    p.add_argument("--json", action="store_true", help="print JSON on stdout")
    p = sub.add_parser("show", parents=[log_format], help="show a component's summary and options")
    p.add_argument("kind", choices=list(KINDS))
    p.add_argument("name")
    p = sub.add_parser("run", parents=[log_format], help="run a continual-learning experiment composed by names")
    p.add_argument("--config", help="TOML file with the same keys as these flags (flags override it)")
    p.add_argument("--benchmark", help="NAME[:key=value,...] (default: the installed default benchmark)")
    p.add_argument("--model", help="NAME[:key=value,...] (default: the installed default model)")
    for kind in ("plugin", "metric", "logger"):
        p.add_argument(f"--{kind}", action="append", default=[], help="NAME[:key=value,...], repeatable")
    p.add_argument("--optimizer", choices=("sgd", "adam"), help=f"default: {RUN_KEYS['optimizer']}")
    p.add_argument("--lr", type=float, help=f"learning rate (default: {RUN_KEYS['lr']})")
    p.add_argument("--momentum", type=float, help=f"SGD momentum (default: {RUN_KEYS['momentum']})")
    p.add_argument("--epochs", type=int, help=f"epochs per training experience (default: {RUN_KEYS['epochs']})")
    p.add_argument("--mb-size", dest="mb_size", type=int,
                   help=f"training minibatch size (default: {RUN_KEYS['mb_size']})")
    p.add_argument("--eval-mb-size", dest="eval_mb_size", type=int,
                   help=f"evaluation minibatch size (default: {RUN_KEYS['eval_mb_size']})")
    p.add_argument("--seed", type=int, help=f"default: {RUN_KEYS['seed']}")
    p.add_argument("--eval-every", dest="eval_every", type=int,
                   help="evaluate the eval streams: -1 never, 0 after each experience (default), K also every K "
                        "epochs within an experience")
    p.add_argument("--eval-streams", dest="eval_streams",
                   help="comma-separated streams of the benchmark to evaluate (default: test), e.g. valid,test")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--output", help="run folder (default: a new runs/<YYYYmmdd-HHMMSS>-<benchmark>[-N]); an "
                   "existing folder must be empty, unless --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="let --output be a folder that holds files: the run writes into it, replacing files of "
                        "the same name and keeping the others")
    p.add_argument("--data-root", dest="data_root", help="dataset folder (default: $CLKERNEL_DATA or a cache)")
    p.add_argument("--checkpoint-every", dest="checkpoint_every", type=int,
                   help="also write a checkpoint every N training iterations (default: 0, only at the end of each "
                        "experience and on SIGINT / SIGTERM)")
    p.add_argument("--checkpoint-minutes", dest="checkpoint_minutes", type=float,
                   help="also write a checkpoint every M minutes (default: 0, none on time)")
    p.add_argument("--keep-checkpoints", dest="keep_checkpoints", type=int,
                   help=f"checkpoint files kept in RUN_DIR/checkpoints (default: {RUN_KEYS['keep_checkpoints']})")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its newest checkpoint, with the configuration saved there "
                        f"(options given must match it, except {', '.join(flag(k) for k in RESUME_MAY_CHANGE)})")
    p.add_argument("--num-workers", dest="num_workers", type=int,
                   help="DataLoader worker processes for datasets not in memory (image folders; default: 0)")
    p.add_argument("--pin-memory", dest="pin_memory", action="store_true", default=None,
                   help="DataLoader pinned memory, for faster copies to a GPU")
    p.add_argument("--persistent-workers", dest="persistent_workers", action="store_true", default=None,
                   help="keep DataLoader workers alive between epochs (needs --num-workers > 0)")
    p.add_argument("--on-nonfinite", dest="on_nonfinite", choices=("raise", "warn"),
                   help="a nan or inf training loss: raise (default) stops the run with exit code 1, naming the "
                        "experience, epoch, iteration and part of the loss; warn logs it and trains on")
    parser.commands = dict(sub.choices)
    return parser


def _version() -> str:
    import clkernel

    return clkernel.__version__


COMMANDS = {"plugins": cmd_plugins, "hooks": cmd_hooks, "show": cmd_show, "run": cmd_run}


def _interrupted(command: str, exc: BaseException, **details: str) -> int:
    terminated = isinstance(exc, Terminated)
    hint = {} if _SIGNALS.run_dir is None else {"resume": _resume_command(_SIGNALS.run_dir)}
    log.error("interrupted", command=command, signal="SIGTERM" if terminated else "SIGINT", **hint, **details)
    return EXIT_SIGTERM if terminated else EXIT_SIGINT


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # named after the subcommand, with the nearest option
        command = parser.commands[args.command]
        hint = difflib.get_close_matches(extra[0], command.option_names + parser.option_names, n=1)
        parser.exit(2, f"clkernel {args.command}: error: unrecognized arguments: {' '.join(extra)}"
                       + (f"; did you mean {hint[0]}?" if hint else "") + "\n")
    configure_logging(args.log_format)
    if args.command == "run":  # SIGTERM closes the run as Ctrl-C does (the main thread only can set handlers)
        _SIGNALS.install()
    try:
        return COMMANDS[args.command](args)
    except (UsageError, RegistryError) as e:
        print(f"clkernel {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # stdout closed early (`clkernel hooks | head`): not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's final flush quiet
        return 0
    except KeyboardInterrupt as e:
        return _interrupted(args.command, e)
    except Exception as e:  # noqa: BLE001 - the command reports any failure as exit code 1
        if args.command == "run" and _SIGNALS.pending is not None:  # the signal's consequence (a peer rank gone)
            return _interrupted(args.command, _SIGNALS.pending, error=describe_exception(e)[:300])
        log.exception("run_failed" if args.command == "run" else "command_failed", error=describe_exception(e))
        return EXIT_FAILED
    finally:
        if args.command == "run":
            _SIGNALS.restore()
            distributed = sys.modules.get("clkernel.distributed")  # imported only by a run
            if distributed is not None and distributed.is_distributed():
                sys.modules["torch"].distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
