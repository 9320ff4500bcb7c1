"""The ``clkernel`` command: list plugins and events, show a component, run a continual-learning experiment.

Exit codes: 0 done, 2 usage error (bad name, option or value: the message names it and the valid choices),
1 failure during the run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
import tomllib
from pathlib import Path
from typing import Any, Sequence

from clkernel.discovery import FIRST_PARTY, KINDS, RegistryError, parse_options, registry
from clkernel.hookspecs import (
    EVENTS, REGISTRATION_FREQUENCY, REGISTRATION_HOOKS, SPEC, RegistrationHooks, TrainingEvents, plain_text,
    spec_arguments, spec_summary,
)
from clkernel.log import configure_logging, get_logger

__all__ = ["CONTEXT_PARAMETERS", "UsageError", "cmd_hooks", "cmd_plugins", "cmd_run", "cmd_show", "main"]

log = get_logger("clkernel")

#: Factory parameters that ``clkernel run`` fills from the run when the user does not set them.
CONTEXT_PARAMETERS = ("num_classes", "input_size", "input_shape", "in_channels", "run_dir", "config", "benchmark",
                      "seed", "device", "dataset_root")


class UsageError(Exception):
    """Bad command-line input: exit code 2."""


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
    print("options:" if comp.options() else "options: (none)")
    for p in comp.options().values():
        ann = "" if p.annotation is p.empty else f": {getattr(p.annotation, '__name__', p.annotation)}"
        default = "" if p.default is p.empty else f" = {p.default!r}"
        filled = "  (filled by `clkernel run`)" if p.name in CONTEXT_PARAMETERS else ""
        print(f"  {p.name}{ann}{default}{filled}")
    return 0


# ---------------------------------------------------------------------- run

RUN_KEYS = {"benchmark": None, "model": None, "plugin": [], "metric": [], "logger": [], "optimizer": "sgd",
            "lr": 0.01, "momentum": 0.9, "epochs": 1, "mb_size": 32, "eval_mb_size": 256, "seed": 0,
            "device": None, "output": None, "data_root": None, "on_nonfinite": "raise"}


CONFIG_ALIASES = {"plugins": "plugin", "metrics": "metric", "loggers": "logger"}


def _resolve_config(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults, overridden by the ``--config`` file, overridden by flags."""
    config = {k: (list(v) if isinstance(v, list) else v) for k, v in RUN_KEYS.items()}
    if args.config:
        try:
            data = tomllib.loads(Path(args.config).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise UsageError(f"cannot read config file {args.config}: {e}") from None
        for key, value in data.items():
            key = key.replace("-", "_")
            key = CONFIG_ALIASES.get(key, key)
            if key not in RUN_KEYS:
                raise UsageError(f"config file {args.config}: unknown key {key!r}; keys: {', '.join(RUN_KEYS)}")
            if isinstance(RUN_KEYS[key], list) and not isinstance(value, list):
                value = [value]
            config[key] = value
    for key in RUN_KEYS:
        value = getattr(args, key)
        if value is not None and value != []:
            config[key] = value
    for key, kind in (("epochs", int), ("mb_size", int), ("eval_mb_size", int), ("seed", int), ("lr", float),
                      ("momentum", float)):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
            raise UsageError(f"{key} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    for key in ("epochs", "mb_size", "eval_mb_size"):
        if config[key] < 1:
            raise UsageError(f"--{key.replace('_', '-')} must be a positive integer, got {config[key]!r}")
    if not math.isfinite(config["lr"]) or config["lr"] <= 0:
        raise UsageError(f"--lr must be a positive number, got {config['lr']!r}")
    if config["optimizer"] not in ("sgd", "adam"):
        raise UsageError(f"--optimizer must be sgd or adam, got {config['optimizer']!r}")
    if config["on_nonfinite"] not in ("raise", "warn"):
        raise UsageError(f"--on-nonfinite must be raise or warn, got {config['on_nonfinite']!r}")
    return config


def _component_spec(kind: str, spec: Any) -> tuple[str, dict[str, Any]]:
    """A ``"name:k=v"`` string or a config table ``{name = ..., k = v}`` -> (name, options)."""
    if isinstance(spec, dict):
        options = dict(spec)
        name = options.pop("name", None)
        if not name:
            raise UsageError(f"a {kind} table in the config needs a 'name' key, got {spec}")
        return registry().get(kind, name).name, options
    return parse_options(kind, str(spec))


def _build(kind: str, spec: Any, context: dict[str, Any], used: dict[str, str]) -> Any:
    """Build one component, filling context parameters the user left out; record it in ``used``."""
    name, options = _component_spec(kind, spec)
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


def cmd_run(args: argparse.Namespace) -> int:
    import torch

    import clkernel
    from clkernel.loop import NonFiniteLossError, Strategy, run

    config = _resolve_config(args)
    config["benchmark"] = _default("benchmark", config["benchmark"])
    config["model"] = _default("model", config["model"])
    config["metric"] = config["metric"] or registry().defaults("metric")
    config["logger"] = config["logger"] or registry().defaults("logger")
    device = torch.device(config["device"] or ("cuda" if torch.cuda.is_available() else "cpu"))
    bench_name = str(config["benchmark"]).split(":")[0] if not isinstance(config["benchmark"], dict) \
        else config["benchmark"].get("name", "run")
    run_dir = Path(config["output"] or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{bench_name}")
    run_dir.mkdir(parents=True, exist_ok=True)
    config["output"], config["device"] = str(run_dir), str(device)

    _seed_everything(config["seed"])
    context: dict[str, Any] = {"run_dir": run_dir, "config": config, "seed": config["seed"], "device": device,
                               "dataset_root": config["data_root"]}
    used: dict[str, str] = {}
    benchmark = _build("benchmark", config["benchmark"], context, used)
    shape = benchmark.input_shape
    context.update(benchmark=benchmark, num_classes=benchmark.num_classes, input_shape=shape,
                   input_size=math.prod(shape), in_channels=shape[0] if shape else 1)
    model = _build("model", config["model"], context, used)
    plugins = [_build("plugin", p, context, used) for p in config["plugin"]]
    metrics = [_build("metric", m, context, used) for m in config["metric"]]
    loggers = [_build("logger", lg, context, used) for lg in config["logger"]]
    if config["optimizer"] == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"], momentum=config["momentum"])
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    strategy = Strategy(model, optimizer, torch.nn.CrossEntropyLoss(), plugins=[*plugins, *metrics, *loggers],
                        train_mb_size=config["mb_size"], train_epochs=config["epochs"],
                        eval_mb_size=config["eval_mb_size"], device=device, eval_every=0,
                        on_nonfinite=config["on_nonfinite"])
    log.info("run_start", kernel=clkernel.__version__, components=used, seed=config["seed"], device=str(device),
             run_dir=str(run_dir))
    try:
        results = run(strategy, benchmark, eval_streams=("test",))
    except NonFiniteLossError as e:  # diverged: the message says where and what; a traceback would add nothing
        log.error("run_failed", error=str(e))
        return 1
    files = strategy.close()
    summary = {k: (v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v) for k, v in results.items()
               if isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1)}
    log.info("run_end", run_dir=str(run_dir), results=summary)
    print(f"run finished; results in {run_dir}")
    for path in files:
        print(f"  {path}")
    return 0


# ---------------------------------------------------------------------- entry point

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clkernel", description=plain_text(__doc__.split("\n")[0]))
    parser.add_argument("--version", action="version", version=f"clkernel {_version()}")
    log_format = argparse.ArgumentParser(add_help=False)  # accepted before and after the subcommand
    log_format.add_argument("--log-format", choices=("auto", "console", "json"), default=argparse.SUPPRESS,
                            help="structured log format on stderr (default: console in a terminal, else json)")
    parser.add_argument("--log-format", choices=("auto", "console", "json"), default="auto",
                        help="structured log format on stderr (default: console in a terminal, else json)")
    sub = parser.add_subparsers(dest="command", required=True)
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
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--output", help="run folder (default: runs/<time>-<benchmark>)")
    p.add_argument("--data-root", dest="data_root", help="dataset folder (default: $CLKERNEL_DATA or a cache)")
    p.add_argument("--on-nonfinite", dest="on_nonfinite", choices=("raise", "warn"),
                   help="a nan or inf training loss: raise (default) stops the run with exit code 1, naming the "
                        "experience, epoch, iteration and part of the loss; warn logs it and trains on")
    return parser


def _version() -> str:
    import clkernel

    return clkernel.__version__


COMMANDS = {"plugins": cmd_plugins, "hooks": cmd_hooks, "show": cmd_show, "run": cmd_run}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.log_format)
    try:
        return COMMANDS[args.command](args)
    except (UsageError, RegistryError) as e:
        print(f"clkernel {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # stdout closed early (`clkernel hooks | head`): not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's final flush quiet
        return 0
    except KeyboardInterrupt:
        log.error("interrupted", command=args.command)
        return 1
    except Exception as e:  # noqa: BLE001 - the command reports any failure as exit code 1
        log.exception("run_failed" if args.command == "run" else "command_failed", error=f"{type(e).__name__}: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
