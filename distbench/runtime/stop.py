"""What a signal means at every moment of a run: stop at the next safe point, and say where.

`launch/run.py` installs one `StopRequest` on its first lines, before the heavy imports, so a signal is
never met by Python's default action (SIGTERM: death with no trace; SIGINT: a KeyboardInterrupt traceback
from whatever the rank was computing). SIGTERM (Slurm's preemption and time limit, torchrun's shutdown),
SIGINT (Ctrl-C: torchrun passes it to every rank) and SIGUSR1 (Slurm's `--signal`) mean the same thing:

- during start-up (imports, process group, model, data, engine, checkpoint load) nothing is worth saving
  and no step is in flight: the process ends at once, rank 0 leaving its `failed` record (`on_start_up_stop`),
  whatever the main thread is doing. This is done by a watcher thread, woken by the signal through
  `signal.set_wakeup_fd`, not by the Python-level handler: that one runs only when the main thread returns
  to the interpreter, and a rank waiting in the process group's rendezvous for a peer that has just stopped
  would not return before torchrun's or Slurm's SIGKILL, 30 s later; raising from the handler inside an
  import would leave torch half imported and the record unwritable.
- from the first step on, the signal is only noted; the loop acts on it at the next boundary that all
  ranks agree on (`distbench.runtime.engines.StopVote`): a training step, an evaluation batch, a timed no-sync step.
  A checkpoint save in progress finishes first.

The first request wins; repeats of it are ignored (Slurm may deliver a signal twice, and torchrun passes on
the signal it got). One exception, as users of a terminal expect: after a Ctrl-C, a second stop signal
that arrives `SAME_REQUEST_S` or more after the first stops the process at once (exit 130), from the
watcher thread, so even a rank blocked in a collective goes. torchrun turns a second Ctrl-C into SIGTERM
for its workers, hence "any signal after a SIGINT". Files are written whole or not at all, so the
previous checkpoint stays in force.

Stdlib only: this module must be importable before torch.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

EXIT_STOPPED = 75  # EX_TEMPFAIL (sysexits.h): stopped on request; the same command resumes it (or reruns it)
EXIT_AT_ONCE = 130  # 128 + SIGINT, as a shell reports a Ctrl-C
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
SAME_REQUEST_S = 1.0  # a repeat within this time is the same request (delivered twice), not a second one
START_UP = "start-up"


class Stopped(BaseException):
    """The run stopped on a signal. A BaseException, as KeyboardInterrupt is: raised from the handler during
    start-up, it must not be swallowed by a library's `except Exception`.

    `agreed`: every rank stopped at the same boundary (the loop's vote), so the ranks may still meet in a
    barrier; a start-up stop is each rank's own. `checkpoint`: the step directory that is now in force."""

    def __init__(
        self,
        signal_name: str,
        phase: str,
        step: int | None = None,
        total: int | None = None,
        checkpoint: os.PathLike | None = None,
        agreed: bool = False,
    ) -> None:
        self.signal, self.phase, self.step, self.total = signal_name, phase, step, total
        self.checkpoint, self.agreed = checkpoint, agreed
        super().__init__(self.describe())

    def where(self) -> str:
        after = f", after step {self.step} of {self.total}" if self.step is not None else ""
        return f"stopped by {self.signal} during {self.phase}{after}"

    def describe(self, checkpoint_dir: os.PathLike | None = None) -> str:
        if self.checkpoint is not None:
            return f"{self.where()}: saved to {self.checkpoint}; run the same command again to resume"
        if checkpoint_dir is None:
            return f"{self.where()}: no --checkpoint-dir, so nothing to resume from"
        return f"{self.where()}: no checkpoint in {checkpoint_dir} yet, so nothing to resume from"

    def __str__(self) -> str:
        return self.describe()


class StopRequest:
    """The process's one stop request. `signal` is the first signal's name (None: none yet), `phase` what
    the process is doing now, `signal_phase` what it was doing when the signal came."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self.signal_phase: str | None = None
        self.phase = START_UP
        self._first_at = 0.0
        self._lock = threading.Lock()
        self._previous: dict[int, object] = {}
        self._wakeup: tuple[int, int] | None = None
        # Set by the entry point. Each is called from the watcher thread and ends the process; rank 0 leaves a
        # record there if nothing else will.
        self.on_start_up_stop: Callable[[Stopped], None] | None = None
        self.on_stop_at_once: Callable[[str], None] | None = None

    def install(self) -> StopRequest:
        if self._previous:  # installed already
            return self
        for s in SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)
        if threading.current_thread() is threading.main_thread() and self._wakeup is None:
            read, write = os.pipe()
            os.set_blocking(write, False)
            self._previous_wakeup = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
            self._wakeup = (read, write)
            threading.Thread(target=self._watch, args=(read,), name="distbench-stop", daemon=True).start()
        return self

    def uninstall(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
        if self._wakeup is not None:
            signal.set_wakeup_fd(self._previous_wakeup)
            os.close(self._wakeup[1])  # the watcher's read ends, and so does the watcher
            self._wakeup = None

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        self.install()
        try:
            yield self
        finally:
            self.uninstall()

    def _handle(self, signum: int, frame) -> None:
        self._note(signal.Signals(signum).name)

    def _note(self, name: str) -> bool:
        """Record `name` if it is the first request; True if it was."""
        with self._lock:
            if self.signal is not None:
                return False
            self.signal, self.signal_phase, self._first_at = name, self.phase, time.monotonic()
            return True

    def _watch(self, fd: int) -> None:
        while True:
            try:
                data = os.read(fd, 64)
            except OSError:
                return
            if not data:
                return
            for signum in data:
                try:
                    name = signal.Signals(signum).name
                except ValueError:
                    continue
                if signum not in SIGNALS:
                    continue
                first = self._note(name)
                if not first and self.signal == "SIGINT" and time.monotonic() - self._first_at >= SAME_REQUEST_S:
                    self._stop_at_once(name)
                elif self.phase == START_UP and self.on_start_up_stop is not None:
                    self.on_start_up_stop(Stopped(self.signal, START_UP))

    def _stop_at_once(self, name: str) -> None:
        message = f"stopped at once by a second {name} (after {self.signal}) during {self.phase}"
        if self.on_stop_at_once is not None:
            try:
                self.on_stop_at_once(message)
            except Exception as e:  # the exit must happen; say why the trace could not be left
                print(f"could not record the stop: {e}", file=sys.stderr, flush=True)
        os._exit(EXIT_AT_ONCE)

    def settled(self) -> None:
        """The process has decided how it ends (its record written, or its stop handled): stop signals are
        ignored from now on. Python restores a handled signal's default action while it shuts down, so a late
        SIGTERM (a peer's stop, Slurm's second delivery) would otherwise end an exiting rank as killed (-15)
        and fail the job whose record is already written; an ignored one stays ignored."""
        for s in SIGNALS:
            signal.signal(s, signal.SIG_IGN)

    def on_start_up(self, stop: Callable[[Stopped], None]) -> None:
        """Set what a stop during start-up does (it ends the process); a signal that came before this was
        set, during start-up, is acted on now."""
        self.on_start_up_stop = stop
        if self.signal is not None and self.phase == START_UP:
            stop(Stopped(self.signal, START_UP))

    def enter(self, phase: str) -> None:
        """The process moves on to `phase`. Leaving start-up hands signals over to the loop: from now on one
        is acted on at a boundary the ranks agree on."""
        self.phase = phase

    @contextmanager
    def during(self, phase: str) -> Iterator[None]:
        """`phase` for the duration of the block, then back to the phase before it."""
        before = self.phase
        self.enter(phase)
        try:
            yield
        finally:
            self.phase = before


REQUEST = StopRequest()  # the process's one request: signals are process-wide


# ------------------------------------------------------------------------------------------ fault tests
HOLD_ENV = "DISTBENCH_HOLD"


_ARRIVALS: dict[str, int] = {}


def hold(point: str, request: StopRequest = REQUEST) -> None:
    """Tests only, by environment: with DISTBENCH_HOLD="<point>[@<rank>][#<n>]:<dir>", a rank that reaches
    `point` (for the n-th time; default the first) writes `<dir>/<point>.rank<r>`, notes the first signal it
    gets in `<dir>/<point>.rank<r>.<SIGNAL>`, and waits for `<dir>/<point>.go`. A test can then land a
    signal (or SIGSTOP) at a known moment by waiting for the marker, not by sleeping. Unset (always, outside
    tests), this is one dictionary lookup."""
    spec = os.environ.get(HOLD_ENV)
    if not spec:
        return
    target, _, directory = spec.partition(":")
    target, _, nth = target.partition("#")
    name, _, only = target.partition("@")
    rank = os.environ.get("RANK", "0")
    if name != point or (only and only != rank):
        return
    _ARRIVALS[point] = _ARRIVALS.get(point, 0) + 1
    if _ARRIVALS[point] != int(nth or 1):
        return
    from pathlib import Path

    base = Path(directory)
    (base / f"{point}.rank{rank}").touch()
    deadline = time.monotonic() + 600  # a test that forgot to release its ranks must not hang CI for ever
    noted = False
    while not (base / f"{point}.go").exists() and time.monotonic() < deadline:
        if request.signal is not None and not noted:
            noted = True
            (base / f"{point}.rank{rank}.{request.signal}").touch()
        time.sleep(0.01)
