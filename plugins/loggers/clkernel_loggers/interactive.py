"""Progress in the terminal: a tqdm bar per training epoch and per evaluation, and summary lines.

The bars show the running loss and accuracy, which this logger computes itself from ``state.loss`` and
``state.mb_output`` so that they appear whatever metrics are chosen: per minibatch it only keeps detached
references, folded on the device every few minibatches; it synchronises only when a bar redraws (at most
twice a second) and once per epoch / evaluation. Summary lines show the values that metrics logged (by name:
``*_epoch/train/...``, ``*_stream/eval/...``, ``acc_exp/eval/...``). When the output is not a terminal there are
no bars, only the lines.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from typing import IO, Any

import torch

import clkernel
from clkernel import TrainState

from clkernel_loggers.common import scalar, split_name

__all__ = ["InteractiveLogger"]

REFRESH_S = 0.5
FOLD_EVERY = 32


class _Running:
    """Running loss and accuracy of an epoch or an evaluation, accumulated on the device.

    Training passes ``state.loss``; evaluation passes None and the loss comes from ``criterion`` on the outputs.
    """

    def __init__(self, criterion: Any = None) -> None:
        self.criterion = criterion
        self.losses: list[torch.Tensor] = []
        self.sizes: list[int] = []
        self.outputs: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []
        self.loss_sum: torch.Tensor | float | None = None
        self.correct: torch.Tensor | float = 0.0
        self.count = 0
        self.with_accuracy = True

    def add(self, output: Any, target: torch.Tensor, loss: torch.Tensor | None) -> None:
        n = int(target.shape[0])
        self.count += n
        if loss is not None:
            self.losses.append(loss.detach())
            self.sizes.append(n)
        if self.with_accuracy and isinstance(output, torch.Tensor) and output.dim() == target.dim() + 1:
            self.outputs.append(output.detach())
            self.targets.append(target)
        else:
            self.with_accuracy = False
            self.outputs, self.targets = [], []
        if len(self.targets) >= FOLD_EVERY or len(self.losses) >= FOLD_EVERY:
            self.fold()

    def _add_loss(self, value: torch.Tensor | float) -> None:
        self.loss_sum = value if self.loss_sum is None else self.loss_sum + value

    def fold(self) -> None:
        """Add the kept minibatches to the device sums (no synchronisation)."""
        threads = torch.get_num_threads()
        if threads > 1:  # tiny reductions: waking OpenMP threads for them costs more than it saves
            torch.set_num_threads(1)
        try:
            self._fold()
        finally:
            if threads > 1:
                torch.set_num_threads(threads)

    def _fold(self) -> None:
        if self.losses:
            if len(set(self.sizes)) == 1:
                self._add_loss(torch.stack([x.reshape(()) for x in self.losses]).sum() * self.sizes[0])
            else:
                self._add_loss(sum(x.reshape(()) * n for x, n in zip(self.losses, self.sizes)))
        if self.targets:
            output, target = torch.cat(self.outputs), torch.cat(self.targets)
            self.correct = self.correct + (output.argmax(-1) == target).sum()
            if not self.sizes and self.criterion is not None:
                value = _criterion_sum(self.criterion, output, target)
                if value is not None:
                    self._add_loss(value)
        self.losses, self.sizes, self.outputs, self.targets = [], [], [], []

    def values(self) -> dict[str, float]:
        """Running loss and accuracy (one synchronisation)."""
        self.fold()
        if self.count == 0:
            return {}
        out = {}
        if self.loss_sum is not None:
            out["loss"] = float(self.loss_sum) / self.count
        if self.with_accuracy:
            out["acc"] = float(self.correct) / self.count
        return out


def _criterion_sum(criterion: Any, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    try:
        loss = criterion(output, target)
    except Exception:  # noqa: BLE001 - the bar shows accuracy only when the criterion cannot run on outputs
        return None
    reduction = getattr(criterion, "reduction", "mean")
    if loss.dim() > 0 or reduction == "none":
        return loss.sum()
    return loss if reduction == "sum" else loss * output.shape[0]


class InteractiveLogger:
    """A progress bar per training epoch and per evaluation, with running loss and accuracy, and a summary line
    per epoch, training experience and evaluation; plain lines when the output is not a terminal.

    :param stream: ``stderr`` or ``stdout``.
    :param bars: force the bars on or off; by default they are on when the output is a terminal.
    :param file: write there instead of ``stream`` (any text file object).
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
        self._bar: Any = None
        self._running = _Running()
        self._next_refresh = 0.0
        self._received: dict[str, Any] = {}
        self._start = 0.0
        self._exp_start = 0.0

    # ------------------------------------------------------------------ output

    def _print(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=self.file)
        else:
            print(line, file=self.file, flush=True)

    def _open_bar(self, total: int | None, desc: str, leave: bool) -> None:
        self._close_bar()
        if self.bars:
            from tqdm.auto import tqdm

            size = shutil.get_terminal_size((0, 0))  # 0: unknown (a pseudo-terminal without a size)
            shape = {"dynamic_ncols": True} if size.columns > 0 and size.lines > 0 else {"ncols": 100, "nrows": 24}
            self._bar = tqdm(total=total, desc=desc, file=self.file, leave=leave, unit="it", **shape)
        self._next_refresh = time.monotonic() + REFRESH_S

    def _close_bar(self, postfix: dict[str, float] | None = None) -> None:
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(_fmt_postfix(postfix), refresh=False)
            self._bar.close()
            self._bar = None

    def _tick(self, state: TrainState) -> None:
        if self._bar is None:
            return
        self._bar.update(1)
        now = time.monotonic()
        if now >= self._next_refresh:
            self._next_refresh = now + REFRESH_S
            self._bar.set_postfix(_fmt_postfix(self._running.values()), refresh=False)

    def close(self) -> None:
        self._close_bar()

    # ------------------------------------------------------------------ events

    @clkernel.hookimpl
    def log_metrics(self, state: TrainState, values: dict[str, Any]) -> None:
        if state.rank == 0:
            self._received.update(values)

    @clkernel.hookimpl
    def before_training_exp(self, state: TrainState) -> None:
        if state.rank == 0:
            self._exp_start = time.perf_counter()
            self._received = {}

    @clkernel.hookimpl
    def before_training_epoch(self, state: TrainState) -> None:
        if state.rank != 0:
            return
        self._running = _Running()
        self._start = time.perf_counter()
        total = len(state.dataloader) if hasattr(state.dataloader, "__len__") else None  # type: ignore[arg-type]
        exp = state.experience.index if state.experience is not None else 0
        self._open_bar(total, f"train exp {exp} epoch {state.epoch + 1}/{state.train_epochs}", leave=False)

    @clkernel.hookimpl
    def after_training_iteration(self, state: TrainState) -> None:
        if state.rank != 0:
            return
        self._running.add(state.mb_output, state.mb[1], state.loss)  # type: ignore[index]
        self._tick(state)

    @clkernel.hookimpl(trylast=True)
    def after_training_epoch(self, state: TrainState) -> None:
        if state.rank != 0:
            return
        values = self._running.values()
        self._close_bar(values)
        exp = state.experience.index if state.experience is not None else 0
        seconds = time.perf_counter() - self._start
        self._print(f"train exp {exp} epoch {state.epoch + 1}/{state.train_epochs}: {_fmt(values)} "
                    f"({state.epoch_iteration} it, {seconds:.1f} s)")

    @clkernel.hookimpl(trylast=True)
    def after_training_exp(self, state: TrainState) -> None:
        if state.rank != 0:
            return
        exp = state.experience
        epoch_values = {split_name(k)["metric"]: v for k, v in self._received.items()
                        if split_name(k)["phase"] == "train" and scalar(v) is not None
                        and split_name(k)["metric"].endswith("_epoch")}
        seconds = time.perf_counter() - self._exp_start
        size = f"{len(exp.dataset)} samples, " if exp is not None else ""
        self._print(f"== exp {exp.index if exp else '-'} trained ({size}{state.epoch + 1} epoch(s), {seconds:.1f} s)"
                    + (f": {_fmt(epoch_values)}" if epoch_values else ""))

    @clkernel.hookimpl
    def before_eval(self, state: TrainState) -> None:
        if state.rank != 0:
            return
        self._saved_bar, self._bar = self._bar, None  # a periodic evaluation inside an epoch keeps its bar
        self._saved_running, self._running = self._running, _Running(state.criterion)
        self._saved_received, self._received = self._received, {}
        self._start = time.perf_counter()
        self._open_bar(0, "eval", leave=False)  # the stream's name is set with its first experience

    @clkernel.hookimpl
    def after_eval_dataset_adaptation(self, state: TrainState) -> None:
        if state.rank == 0 and self._bar is not None and state.dataset is not None:
            self._bar.total += -(-len(state.dataset) // state.eval_mb_size)
            self._bar.set_description(f"eval {state.stream_name} exp {state.experience.index}"
                                      if state.experience is not None else f"eval {state.stream_name}")

    @clkernel.hookimpl
    def after_eval_iteration(self, state: TrainState) -> None:
        if state.rank != 0:
            return
        self._running.add(state.mb_output, state.mb[1], None)  # type: ignore[index]
        self._tick(state)

    @clkernel.hookimpl(trylast=True)
    def after_eval(self, state: TrainState) -> None:
        if state.rank != 0:
            return
        own = self._running.values()
        self._close_bar()
        stream = state.stream_name
        stream_values: dict[str, Any] = {}
        per_exp: dict[int, float] = {}
        for name, value in self._received.items():
            parts, v = split_name(name), scalar(value)
            if v is None or parts["phase"] != "eval" or parts["stream"] != stream:
                continue
            if parts["metric"].endswith(("_stream", "_exp_mean")) and parts["task"] is None \
                    and parts["class"] is None:
                stream_values[parts["metric"]] = v
            if parts["metric"] == "acc_exp" and parts["exp"] is not None and parts["task"] is None:
                per_exp[parts["exp"]] = v
        seconds = time.perf_counter() - self._start
        line = f"-- eval {stream} (trained {state.experiences_trained} exp, {seconds:.1f} s): "
        line += _fmt(stream_values) if stream_values else _fmt(own)
        if per_exp:
            line += " | acc per exp: " + " ".join(f"{per_exp[k]:.3f}" for k in sorted(per_exp))
        self._bar, self._running = self._saved_bar, self._saved_running
        self._saved_received.update(self._received)
        self._received = self._saved_received
        self._print(line)


def _fmt(values: dict[str, Any]) -> str:
    return " ".join(f"{k} {_num(v)}" for k, v in values.items()) or "(no values)"


def _num(v: Any) -> str:
    v = scalar(v)
    if v is None or math.isnan(v):
        return "-"
    return f"{v:.4f}"


def _fmt_postfix(values: dict[str, float]) -> dict[str, str]:
    return {k: f"{v:.4f}" for k, v in values.items()}
