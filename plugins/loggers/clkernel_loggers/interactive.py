"""Progress in the terminal: a tqdm bar per training epoch and per evaluation, and summary lines.

The logger displays; it computes nothing. Everything it shows was received through ``log_metrics``, so a
third-party metric logging names of the scheme (:mod:`clkernel.names`) appears like the first-party ones:

* the training bar's postfix: the last ``QUANTITY_running_epoch/train/STREAM`` values of the epoch (the default
  metrics log the running loss and accuracy every 32 iterations); it redraws at most twice a second, turning
  those 0-d tensors into numbers only then;
* the evaluation bar's postfix: the ``QUANTITY_exp/eval/STREAM/expNNN`` values of the last evaluated experience
  (``exp=1, acc=0.9712, loss=0.0874``);
* a line per trained experience: the ``*_epoch`` values of its last epoch and its ``*_exp/train/*`` values;
* a line per evaluation: the ``*_stream`` and ``*_exp_mean`` values of the evaluated stream, and ``acc_exp`` of
  each of its experiences;
* without bars only (output not a terminal), a line per epoch: its ``*_epoch/train/*`` values (else its last
  running values), iterations and seconds. In a terminal the epoch is the bar's, which goes away: ``--epochs
  200`` keeps one line per experience, not 200;
* at the end of the run (``after_run``), a summary table per evaluated stream, from its last evaluation: the
  scalar ``*_stream`` values (``acc``, ``forgetting``, ``bwt``... whatever was received), the accuracy on each
  experience after the last trained one (the last row of ``accuracy_matrix_stream/eval/STREAM``, else the
  ``acc_exp/eval/STREAM/expNNN`` values), the wall time, and the run folder when the logger was given one
  (``run_dir``, filled by ``clkernel run``).

The evaluation bar counts the minibatches of the experience being evaluated (it starts again at each experience,
named in its description), so it ends at n/n.

Values for a task or a class (``.../taskNNN``, ``.../classNNN``), non-scalars and names outside the scheme are not
shown (other loggers write them).

**Ranks.** Every training event fires on every rank, but the kernel calls ``log_metrics`` on rank 0 only. The
logger shows nothing, no line and no bar, until it has received a first value: other ranks never receive one, so
they stay silent (also after loading rank 0's checkpoint, whose state says it had received some). On rank 0 the first training bar opens on the first
running value (at the iteration it arrives, counting from there to the end of the epoch); once a value has been
received, bars open when their epoch or evaluation starts. A run with no metric at all shows nothing.

When the output is not a terminal there are no bars, only plain lines. A line that cannot be written (output
redirected to a file on a full disk) raises :class:`~clkernel_loggers.LoggerWriteError` naming the output.

**Checkpoints.** ``state_dict()`` holds what the summary and the per-experience line need (the last values of
each evaluated stream, the values of the experience and epoch in progress, the time spent so far); a fresh logger
that loads it continues them: the summary of a resumed run is the uninterrupted run's, with the wall time of both
parts (not the time in between). What was printed stays printed.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from typing import IO, Any

import torch

import clkernel
from clkernel import TrainState
from clkernel_loggers.common import (
    LoggerResumeError, LoggerWriteError, is_matrix, is_rank_zero, metric_parts, scalar,
)

__all__ = ["REFRESH_S", "STATE_FORMAT", "InteractiveLogger"]

#: The version of the interactive logger's ``state_dict()`` layout.
STATE_FORMAT = 1

#: Seconds between two redraws of a bar's values (at most).
REFRESH_S = 0.5


class InteractiveLogger:
    """A progress bar per training epoch and per evaluated experience, showing the values received; a line per
    trained experience and per evaluation; a summary table at the end of the run. Plain lines, a line per epoch
    too, when the output is not a terminal.

    :param stream: ``stderr`` or ``stdout``.
    :param bars: force the bars on or off; by default they are on when the output is a terminal.
    :param file: write there instead of ``stream`` (any text file object).
    :param run_dir: the run folder, named at the end of the summary (``clkernel run`` fills it).
    :raises ValueError: for another ``stream``.
    :raises LoggerWriteError: during the run, naming the output, when a line cannot be written.
    """

    name = "interactive"

    def __init__(self, stream: str = "stderr", bars: bool | None = None, file: IO[str] | None = None,
                 run_dir: str | os.PathLike[str] | None = None) -> None:
        if stream not in ("stderr", "stdout"):
            raise ValueError(f"interactive logger: stream must be 'stderr' or 'stdout', got {stream!r}")
        self.file = file if file is not None else (sys.stderr if stream == "stderr" else sys.stdout)
        if bars is None:
            isatty = getattr(self.file, "isatty", None)
            bars = bool(isatty and isatty())
        self.bars = bars
        self.run_dir = run_dir
        self._active = False  # a value was received: this process displays (rank 0)
        self._bar: Any = None
        self._next_refresh = 0.0
        self._running: dict[str, Any] = {}  # quantity -> last running value of the epoch
        self._epoch: dict[str, Any] = {}  # QUANTITY_epoch -> value, this epoch
        self._exp: dict[str, Any] = {}  # QUANTITY_epoch / QUANTITY_exp -> value, this training experience
        self._eval: dict[str, Any] = {}  # name -> value, this evaluation
        self._evaluating = 0  # evaluations under way (one inside an epoch is nested)
        self._saved: list[tuple[Any, dict[str, Any], float]] = []  # what an evaluation interrupts
        self._last: dict[str, dict[str, Any]] = {}  # stream -> name -> value, its last evaluation
        self._epoch_start = self._exp_start = self._eval_start = 0.0
        self._run_start = time.perf_counter()
        self._resumed: dict[str, float] | None = None  # seconds spent before the checkpoint, when resumed

    # ------------------------------------------------------------------ output

    def _print(self, line: str) -> None:
        try:
            if self._bar is not None:
                self._bar.write(line, file=self.file)
            else:
                print(line, file=self.file, flush=True)
        except OSError as e:
            raise LoggerWriteError("interactive", str(getattr(self.file, "name", repr(self.file))), e) from e

    def _width(self) -> int:
        if self.bars:
            columns = shutil.get_terminal_size((0, 0)).columns
            if columns > 0:
                return columns
        return 100

    def _open_bar(self, total: int | None, desc: str, initial: int = 0) -> None:
        self._close_bar()
        from tqdm.auto import tqdm

        size = shutil.get_terminal_size((0, 0))  # 0: unknown (a pseudo-terminal without a size)
        shape = {"dynamic_ncols": True} if size.columns > 0 and size.lines > 0 else {"ncols": 100, "nrows": 24}
        self._bar = tqdm(total=total, initial=initial, desc=desc, file=self.file, leave=False, unit="it", **shape)
        self._next_refresh = 0.0

    def _open_train_bar(self, state: TrainState, initial: int) -> None:
        loader = state.dataloader
        total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
        exp = state.experience.index if state.experience is not None else 0
        self._open_bar(total, f"train exp {exp} epoch {state.epoch + 1}/{state.train_epochs}", initial)

    def _close_bar(self, postfix: dict[str, Any] | None = None) -> None:
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(_postfix(postfix), refresh=False)
            self._bar.close()
            self._bar = None

    # ------------------------------------------------------------------ values

    @clkernel.hookimpl
    def log_metrics(self, state: TrainState, values: dict[str, Any]) -> None:
        self._active = True
        running = False
        eval_exp: dict[str, Any] = {}
        exp_index: int | None = None
        for name, value in values.items():
            parts = metric_parts(name)
            if parts is None or parts.task is not None or parts.cls is not None:
                continue
            if parts.phase == "train":
                if parts.granularity == "running_epoch":
                    self._running[parts.quantity] = value
                    running = True
                elif parts.granularity == "epoch":
                    self._epoch[parts.metric] = self._exp[parts.metric] = value
                elif parts.granularity == "exp":
                    self._exp[parts.metric] = value
            elif self._evaluating:
                self._eval[name] = value
                if parts.granularity == "exp" and scalar(value) is not None:
                    eval_exp[parts.quantity], exp_index = value, parts.exp
            else:  # an evaluation value logged outside an evaluation: it still counts for the summary
                self._last.setdefault(parts.stream, {})[name] = value
        if running and self.bars and state.is_training:
            if self._bar is None:
                self._open_train_bar(state, initial=state.epoch_iteration)
            self._show_running()
        elif eval_exp and self._bar is not None and not state.is_training:
            self._bar.set_postfix({"exp": "-" if exp_index is None else str(exp_index), **_postfix(eval_exp)},
                                  refresh=False)

    # ------------------------------------------------------------------ training

    @clkernel.hookimpl
    def before_run(self, state: TrainState) -> None:
        now = time.perf_counter()
        spent, self._resumed = self._resumed or {}, None
        self._run_start = now - spent.get("run", 0.0)
        self._exp_start = now - spent.get("exp", 0.0)
        self._epoch_start = now - spent.get("epoch", 0.0)

    @clkernel.hookimpl
    def before_training_exp(self, state: TrainState) -> None:
        self._exp_start = time.perf_counter()
        self._exp = {}

    @clkernel.hookimpl
    def before_training_epoch(self, state: TrainState) -> None:
        self._epoch_start = time.perf_counter()
        self._running, self._epoch = {}, {}
        if self._active and self.bars:
            self._open_train_bar(state, initial=0)

    @clkernel.hookimpl
    def after_training_iteration(self, state: TrainState) -> None:
        bar = self._bar
        if bar is None:
            return
        bar.update(state.epoch_iteration - bar.n)  # whatever the plugin order, the bar shows the iterations done
        self._show_running()

    def _show_running(self) -> None:
        """Redraw the training bar with the last running values, at most every REFRESH_S seconds (turning 0-d
        device tensors into numbers only then)."""
        now = time.monotonic()
        if now >= self._next_refresh and self._running and self._bar is not None:
            self._next_refresh = now + REFRESH_S
            self._bar.set_postfix(_postfix(self._running))

    @clkernel.hookimpl(trylast=True)
    def after_training_epoch(self, state: TrainState) -> None:
        self._close_bar(self._running)
        if not self._active or self.bars:  # in a terminal the epoch was its bar's: no line per epoch
            return
        values = dict(self._epoch) or {f"{q}_running_epoch": v for q, v in self._running.items()}
        exp = state.experience.index if state.experience is not None else 0
        seconds = time.perf_counter() - self._epoch_start
        self._print(f"train exp {exp} epoch {state.epoch + 1}/{state.train_epochs}: {_fmt(values)} "
                    f"({state.epoch_iteration} it, {seconds:.1f} s)")

    @clkernel.hookimpl(trylast=True)
    def after_training_exp(self, state: TrainState) -> None:
        if not self._active:
            return
        exp = state.experience
        seconds = time.perf_counter() - self._exp_start
        size = f"{len(exp.dataset)} samples, " if exp is not None else ""
        shown = {k: v for k, v in self._exp.items() if scalar(v) is not None}
        self._print(f"== exp {exp.index if exp else '-'} trained ({size}{state.epoch + 1} epoch(s), "
                    f"{_duration(seconds)})" + (f": {_fmt(shown)}" if shown else ""))

    # ------------------------------------------------------------------ evaluation

    @clkernel.hookimpl
    def before_eval(self, state: TrainState) -> None:
        self._saved.append((self._bar, self._eval, self._eval_start))  # an evaluation inside an epoch keeps its bar
        self._bar, self._eval, self._eval_start = None, {}, time.perf_counter()
        self._evaluating += 1

    @clkernel.hookimpl
    def after_eval_dataset_adaptation(self, state: TrainState) -> None:
        """(Re)start the evaluation bar at the experience's number of minibatches: it ends at n/n."""
        if not (self._active and self.bars) or state.dataset is None:
            return
        total = -(-len(state.dataset) // state.eval_mb_size)
        desc = (f"eval {state.stream_name} exp {state.experience.index}" if state.experience is not None
                else f"eval {state.stream_name}")
        if self._bar is None:
            self._open_bar(total, desc)
        else:  # no redraw now (the experience's first redraw shows it): one redraw less per experience
            bar = self._bar
            bar.refresh = _no_redraw  # tqdm's reset redraws; this instance attribute hides the method meanwhile
            try:
                bar.reset(total=total)
            finally:
                del bar.refresh
            bar.set_postfix_str("", refresh=False)  # the values shown were the previous experience's
            bar.set_description(desc, refresh=False)

    @clkernel.hookimpl
    def after_eval_iteration(self, state: TrainState) -> None:
        bar = self._bar
        if bar is not None:
            bar.update(state.epoch_iteration - bar.n)

    @clkernel.hookimpl(trylast=True)
    def after_eval_exp(self, state: TrainState) -> None:
        if self._bar is not None:
            self._bar.refresh()  # the last minibatches may fall between two redraws: show n/n

    @clkernel.hookimpl(trylast=True)
    def after_eval(self, state: TrainState) -> None:
        self._close_bar()
        stream = state.stream_name
        values = {k: v for k, v in self._eval.items() if (p := metric_parts(k)) is not None and p.stream == stream}
        if values:
            self._last[stream] = values
        line = self._eval_line(state) if self._active else None
        self._bar, self._eval, self._eval_start = self._saved.pop() if self._saved else (None, {}, 0.0)
        self._evaluating = max(0, self._evaluating - 1)
        if line is not None:
            self._print(line)

    def _eval_line(self, state: TrainState) -> str:
        stream = state.stream_name
        stream_values: dict[str, Any] = {}
        per_exp: dict[int, float] = {}
        for name, value in self._eval.items():
            parts, v = metric_parts(name), scalar(value)
            if parts is None or v is None or parts.stream != stream:
                continue
            if parts.granularity in ("stream", "exp_mean"):
                stream_values[parts.metric] = v
            elif parts.metric == "acc_exp" and parts.exp is not None:
                per_exp[parts.exp] = v
        seconds = time.perf_counter() - self._eval_start
        line = (f"-- eval {stream} (trained {state.experiences_trained} exp, {_duration(seconds)}): "
                f"{_fmt(stream_values)}")
        if per_exp:
            line += " | acc per exp: " + " ".join(f"{per_exp[k]:.3f}" for k in sorted(per_exp))
        return line

    # ------------------------------------------------------------------ end

    @clkernel.hookimpl
    def after_run(self, state: TrainState) -> None:
        """Close any bar left open (a run that failed inside an epoch), then print the summary table."""
        self._close_bar()
        for bar, _, _ in self._saved:
            if bar is not None:
                bar.close()
        self._saved, self._evaluating = [], 0
        if self._active:
            for line in self.summary_lines(state):
                self._print(line)

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """What the lines to come need: ``active``, ``last`` (stream -> name -> last value of its last
        evaluation), ``exp`` / ``epoch`` / ``running`` (the values of the experience, the epoch so far),
        ``seconds`` (``run``, ``exp``, ``epoch``: time spent in each so far). Numbers, strings and CPU tensors."""
        if self._resumed is not None:  # loaded, the run not started yet: the same checkpoint
            seconds = dict(self._resumed)
        else:
            now = time.perf_counter()
            seconds = {"run": now - self._run_start, "exp": now - self._exp_start, "epoch": now - self._epoch_start}
        return {"format": STATE_FORMAT, "logger": "interactive", "active": self._active,
                "last": {stream: {k: _plain(v) for k, v in values.items()} for stream, values in self._last.items()},
                "exp": {k: _plain(v) for k, v in self._exp.items()},
                "epoch": {k: _plain(v) for k, v in self._epoch.items()},
                "running": {k: _plain(v) for k, v in self._running.items()}, "seconds": seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; the times continue from ``before_run``.

        :raises LoggerResumeError: when ``state`` is not an interactive logger's state_dict().
        """
        if not isinstance(state, dict) or state.get("logger") != "interactive":
            raise LoggerResumeError("the interactive logger cannot resume from this state: it is not an interactive "
                                    f"logger's state_dict() ({type(state).__name__})")
        if state.get("format") != STATE_FORMAT:
            raise LoggerResumeError(f"the interactive logger cannot resume from this state: format "
                                    f"{state.get('format')!r}, this version reads format {STATE_FORMAT}")
        self._active = bool(state["active"]) and is_rank_zero()  # rank 0's state: other ranks stay silent
        self._last = {str(s): dict(v) for s, v in state["last"].items()}
        self._exp, self._epoch, self._running = dict(state["exp"]), dict(state["epoch"]), dict(state["running"])
        self._resumed = {k: float(v) for k, v in state["seconds"].items()}

    def summary_lines(self, state: TrainState) -> list[str]:
        """The summary table: per evaluated stream its last scalar ``*_stream`` values and its accuracy on each
        experience after the last trained one; the wall time; the run folder when known."""
        seconds = time.perf_counter() - self._run_start
        lines = [(f"== results after {state.experiences_trained} trained experience(s), wall time "
                  f"{_duration(seconds)}")]
        streams: dict[str, dict[str, float]] = {}
        per_exp: dict[str, dict[int, float]] = {}
        for stream, values in self._last.items():
            quantities: dict[str, float] = {}
            accs: dict[int, float] = {}
            matrix = None
            for name, value in values.items():
                parts = metric_parts(name)
                if parts is None or parts.task is not None or parts.cls is not None:
                    continue
                v = scalar(value)
                if parts.granularity == "stream":
                    if v is not None:
                        quantities[parts.quantity] = v
                    elif parts.quantity == "accuracy_matrix" and is_matrix(value) and len(value) > 0:
                        matrix = value
                elif parts.metric == "acc_exp" and parts.exp is not None and v is not None:
                    accs[parts.exp] = v
            if matrix is not None:
                accs = {j: float(x) for j, x in enumerate(matrix[-1].tolist())}
            if quantities:
                streams[stream] = dict(sorted(quantities.items(), key=lambda kv: kv[0] != "acc"))
            if accs:
                per_exp[stream] = dict(sorted(accs.items()))
        if streams:
            columns = list(dict.fromkeys(q for values in streams.values() for q in values))
            rows = [["stream", *columns]] + [[s, *(_num(v.get(q)) for q in columns)] for s, v in streams.items()]
            lines += _table(rows)
        width = self._width()
        for stream, accs in per_exp.items():
            lines.append(f"   {stream}: accuracy on each experience after the last trained one")
            cells = [(str(j), _num(v)) for j, v in accs.items()]
            per_line = max(1, (width - 10) // 8)
            for i in range(0, len(cells), per_line):
                chunk = cells[i:i + per_line]
                lines += _table([["exp", *(c[0] for c in chunk)], ["acc", *(c[1] for c in chunk)]], indent=5)
        if not streams and not per_exp:
            lines.append("   (no evaluation values received)")
        if self.run_dir is not None:
            lines.append(f"== run folder: {os.fspath(self.run_dir)}")
        return lines


def _no_redraw(*args: Any, **kwargs: Any) -> None:
    return None


def _plain(value: Any) -> Any:
    """A value as a checkpoint holds it: numbers stay, 0-d tensors become floats, tensors move to the CPU."""
    v = scalar(value)
    if v is not None:
        return v
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if type(value).__module__ == "numpy":
        return torch.as_tensor(value)
    return value if isinstance(value, (str, type(None))) else repr(value)


def _table(rows: list[list[str]], indent: int = 3) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [" " * indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m:02d} min {s:02d} s" if hours else f"{m} min {s:02d} s"


def _fmt(values: dict[str, Any]) -> str:
    return " ".join(f"{k} {_num(v)}" for k, v in values.items()) or "(no values)"


def _num(v: Any) -> str:
    v = scalar(v)
    if v is None or math.isnan(v):
        return "-"
    return f"{v:.4f}"


def _postfix(values: dict[str, Any]) -> dict[str, str]:
    return {k: _num(v) for k, v in values.items()}
