"""Progress in the terminal: a tqdm bar per training epoch and per evaluation, and summary lines.

The logger displays; it computes nothing. Everything it shows was received through ``log_metrics``, so a
third-party metric logging names of the scheme (:mod:`clkernel.names`) appears like the first-party ones:

* the training bar's postfix: the last ``QUANTITY_running_epoch/train/STREAM`` values of the epoch (the default
  metrics log the running loss and accuracy every 32 iterations); it redraws at most twice a second, turning
  those 0-d tensors into numbers only then;
* the evaluation bar's postfix: the ``QUANTITY_exp/eval/STREAM/expNNN`` values of the last evaluated experience
  (``exp=1, acc=0.9712, loss=0.0874``);
* a line per epoch: its ``*_epoch/train/*`` values (else its last running values), iterations and seconds;
* a line per trained experience: the ``*_epoch`` values of its last epoch and its ``*_exp/train/*`` values;
* a line per evaluation: the ``*_stream`` and ``*_exp_mean`` values of the evaluated stream, and ``acc_exp`` of
  each of its experiences.

Values for a task or a class (``.../taskNNN``, ``.../classNNN``), non-scalars and names outside the scheme are not
shown (other loggers write them).

**Ranks, without checking the rank.** Every training event fires on every rank, but the kernel calls
``log_metrics`` on rank 0 only. The logger shows nothing, no line and no bar, until it has received a first
value: other ranks never receive one, so they stay silent. On rank 0 the first training bar opens on the first
running value (at the iteration it arrives, counting from there to the end of the epoch); once a value has been
received, bars open when their epoch or evaluation starts. A run with no metric at all shows nothing.

When the output is not a terminal there are no bars, only the lines.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from typing import IO, Any

import clkernel
from clkernel import TrainState

from clkernel_loggers.common import metric_parts, scalar

__all__ = ["REFRESH_S", "InteractiveLogger"]

#: Seconds between two redraws of a bar's values (at most).
REFRESH_S = 0.5


class InteractiveLogger:
    """A progress bar per training epoch and per evaluation, showing the values received, and a summary line per
    epoch, training experience and evaluation; plain lines when the output is not a terminal.

    :param stream: ``stderr`` or ``stdout``.
    :param bars: force the bars on or off; by default they are on when the output is a terminal.
    :param file: write there instead of ``stream`` (any text file object).
    :raises ValueError: for another ``stream``.
    """

    name = "interactive"

    def __init__(self, stream: str = "stderr", bars: bool | None = None, file: IO[str] | None = None) -> None:
        if stream not in ("stderr", "stdout"):
            raise ValueError(f"interactive logger: stream must be 'stderr' or 'stdout', got {stream!r}")
        self.file = file if file is not None else (sys.stderr if stream == "stderr" else sys.stdout)
        if bars is None:
            isatty = getattr(self.file, "isatty", None)
            bars = bool(isatty and isatty())
        self.bars = bars
        self._active = False  # a value was received: this process displays (rank 0)
        self._bar: Any = None
        self._next_refresh = 0.0
        self._running: dict[str, Any] = {}  # quantity -> last running value of the epoch
        self._epoch: dict[str, Any] = {}  # QUANTITY_epoch -> value, this epoch
        self._exp: dict[str, Any] = {}  # QUANTITY_epoch / QUANTITY_exp -> value, this training experience
        self._eval: dict[str, Any] = {}  # name -> value, this evaluation
        self._saved: list[tuple[Any, dict[str, Any], float]] = []  # what an evaluation interrupts
        self._epoch_start = self._exp_start = self._eval_start = 0.0

    # ------------------------------------------------------------------ output

    def _print(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=self.file)
        else:
            print(line, file=self.file, flush=True)

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
            else:
                self._eval[name] = value
                if parts.granularity == "exp" and scalar(value) is not None:
                    eval_exp[parts.quantity], exp_index = value, parts.exp
        if running and self.bars and state.is_training:
            if self._bar is None:
                self._open_train_bar(state, initial=state.epoch_iteration)
            self._show_running()
        elif eval_exp and self._bar is not None and not state.is_training:
            self._bar.set_postfix({"exp": "-" if exp_index is None else str(exp_index), **_postfix(eval_exp)},
                                  refresh=False)

    # ------------------------------------------------------------------ training

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
        if not self._active:
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
        self._print(f"== exp {exp.index if exp else '-'} trained ({size}{state.epoch + 1} epoch(s), {seconds:.1f} s)"
                    + (f": {_fmt(shown)}" if shown else ""))

    # ------------------------------------------------------------------ evaluation

    @clkernel.hookimpl
    def before_eval(self, state: TrainState) -> None:
        self._saved.append((self._bar, self._eval, self._eval_start))  # an evaluation inside an epoch keeps its bar
        self._bar, self._eval, self._eval_start = None, {}, time.perf_counter()
        if self._active and self.bars:
            self._open_bar(0, "eval")  # the stream's name is set with its first experience

    @clkernel.hookimpl
    def after_eval_dataset_adaptation(self, state: TrainState) -> None:
        if self._bar is not None and state.dataset is not None:
            self._bar.total += -(-len(state.dataset) // state.eval_mb_size)
            self._bar.set_description(f"eval {state.stream_name} exp {state.experience.index}"
                                      if state.experience is not None else f"eval {state.stream_name}")

    @clkernel.hookimpl
    def after_eval_iteration(self, state: TrainState) -> None:
        if self._bar is not None:
            self._bar.update(1)

    @clkernel.hookimpl(trylast=True)
    def after_eval(self, state: TrainState) -> None:
        self._close_bar()
        line = self._eval_line(state) if self._active else None
        self._bar, self._eval, self._eval_start = self._saved.pop() if self._saved else (None, {}, 0.0)
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
        line = f"-- eval {stream} (trained {state.experiences_trained} exp, {seconds:.1f} s): {_fmt(stream_values)}"
        if per_exp:
            line += " | acc per exp: " + " ".join(f"{per_exp[k]:.3f}" for k in sorted(per_exp))
        return line

    # ------------------------------------------------------------------ end

    @clkernel.hookimpl
    def after_run(self, state: TrainState) -> None:
        """Close any bar left open (a run that failed inside an epoch)."""
        self._close_bar()
        for bar, _, _ in self._saved:
            if bar is not None:
                bar.close()
        self._saved = []


def _fmt(values: dict[str, Any]) -> str:
    return " ".join(f"{k} {_num(v)}" for k, v in values.items()) or "(no values)"


def _num(v: Any) -> str:
    v = scalar(v)
    if v is None or math.isnan(v):
        return "-"
    return f"{v:.4f}"


def _postfix(values: dict[str, Any]) -> dict[str, str]:
    return {k: _num(v) for k, v in values.items()}
