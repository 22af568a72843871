"""SIGINT/SIGTERM: one handler for the whole run, and a safe point to stop at in every phase.

    with signals.handling():                       # runner.main: the whole run
        with signals.phase("training", deferred=True):
            for step in ...:
                ...
                if signals.stop_requested():       # the first signal is only recorded here
                    save_checkpoint()
                    raise Interrupted(run_dir, step)

What the first signal does depends on the phase it arrives in:
- `training` (deferred): recorded; the trainer finishes the step, checkpoints, raises
  `Interrupted`.
- `saving` (deferred): recorded; a save is never cut half-way, the stop comes when it ends.
- every other phase (`setup`: config, imports, upstream stages, loading and tokenising data;
  `precompute`: DPO/KTO reference log-probs; `evaluation`): `Stop` is raised at once, since
  these phases restart cheaply on resume.
- `idle` (no phase: before a run starts, between the jobs of a sweep): recorded, and raised as
  `Stop` when the next phase begins.

A second signal raises `Stop` at once in any phase. Once the runner is reporting the stop
(`exiting()`), any further signal ends the process at once (`os._exit`), without a traceback.
A `Stop` that Python itself swallowed (raised in an at-fork hook, such as logging's when
`datasets.map(num_proc=...)` starts its workers, or in a `__del__`: "Exception ignored") is
raised again at the next line of Python that runs, without the ignored traceback; one that
library code swallowed is raised again when the next phase begins.
Processes forked from the run (e.g. `datasets.map` workers) leave the decision to the run:
they ignore SIGINT and exit quietly on SIGTERM (what `Pool.terminate` sends).

`Stop` is a `KeyboardInterrupt`: library code that catches `Exception` lets it through, and
code that cleans up after Ctrl-C (datasets' cache files, the artifact cache's temp dirs,
`atomic_write_text`) does so. Exit code of a stopped run: 128 + the signal's number (130 for
SIGINT, 143 for SIGTERM), what a shell reports for a process that the signal killed. When the
entry script owns the process (`handling(owns_process=True)`, run.py), `exit_process` ends it
without the interpreter's teardown: after native work cut short (a generation, an arrow
write) that teardown once aborted (SIGABRT, exit -6) instead of exiting with the code.

Standard library only: the runner installs this before anything heavy is imported.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def exit_code(signum: int) -> int:
    """128 + the signal's number: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + int(signum)


class Stop(KeyboardInterrupt):
    """A run stops here because of `signum`, which arrived during `phase`.

    `forced`: a second signal, which does not wait for the phase's safe point.
    """

    def __init__(self, signum: int, phase: str, forced: bool = False) -> None:
        self.signum, self.phase, self.forced = signum, phase, forced
        super().__init__(f"{signal_name(signum)} during {phase}")


@dataclass
class _Phase:
    name: str
    deferred: bool  # a signal is recorded, not raised, until the phase ends


_IDLE = _Phase("idle", deferred=True)


class Guard:
    """The process's one handler; use the module functions (`handling`, `phase`, ...)."""

    def __init__(self) -> None:
        self.signum: int | None = None  # the first signal received
        self.phase: str | None = None  # the phase it arrived in
        self._phases: list[_Phase] = []
        self._depth = 0  # nested `handling()` blocks
        self._owner: int | None = None  # pid of the process that installed the handler
        self._previous: dict[int, Any] = {}
        self._exiting = False
        self.owns_process = False  # `exit_process` may end the process at once
        self._reraise = False  # a swallowed `Stop` is due again
        self._unraisable_hook: Any = None

    # -------------------------------------------------------------------------- state
    def current(self) -> _Phase:
        return self._phases[-1] if self._phases else _IDLE

    def stop_requested(self) -> bool:
        return self.signum is not None

    def check(self) -> None:
        """Raise `Stop` if a signal is pending (a safe point outside deferred phases)."""
        if self.signum is not None and not self._exiting:
            self._reraise = False  # raised here, not by `_resend`
            raise Stop(self.signum, self.phase or self.current().name)

    def exiting(self) -> None:
        """The runner is reporting a stop: a further signal ends the process at once."""
        self._exiting, self._reraise = True, False

    def reset(self) -> None:
        self.signum = self.phase = None
        self._exiting = self._reraise = False

    def _unraisable(self, unraisable: Any) -> None:
        """`sys.unraisablehook`: a `Stop` Python could not raise is raised again (by sending
        its signal to the main thread once more); anything else is reported as usual."""
        stop = unraisable.exc_value
        if not isinstance(stop, Stop) or os.getpid() != self._owner or self._exiting:
            self._unraisable_hook(unraisable)
            return
        self._reraise = True
        # later, from another thread: sent now, the handler would run (and raise) in this hook
        resend = threading.Timer(0.05, self._resend, args=(stop.signum,))
        resend.daemon = True
        resend.start()

    def _resend(self, signum: int) -> None:
        if self._reraise and self._previous:  # still due, and still our handler's to take
            signal.pthread_kill(threading.main_thread().ident, signum)

    # ------------------------------------------------------------------------ handler
    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._owner:  # a forked worker: the run decides
            if signum == signal.SIGINT:
                return
            os._exit(exit_code(signum))
        if self._exiting:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os._exit(exit_code(self.signum or signum))
        current = self.current()
        if self._reraise:  # sent by `_unraisable`
            self._reraise = False
            raise Stop(self.signum or signum, self.phase or current.name)
        if self.signum is not None:  # the second signal: the user means it
            raise Stop(signum, current.name, forced=True)
        self.signum, self.phase = signum, current.name
        if not current.deferred:
            raise Stop(signum, current.name)
        if current.name == "training":
            what = "finishing this step and saving a checkpoint"
        elif current is _IDLE:
            what = "stopping before the next run starts"
        else:
            what = f"stopping when {current.name} ends"
        log.warning("%s received: %s (send it again to stop at once)", signal_name(signum), what)

    # ----------------------------------------------------------------------- contexts
    @contextmanager
    def handling(self, owns_process: bool = False) -> Iterator[Guard]:
        """Install the handler for the block (nested blocks reuse the outermost one).

        `owns_process`: the caller is the process's entry script (see `exit_process`).
        """
        outermost = self._depth == 0
        if outermost:
            self.reset()
            self.owns_process = owns_process
            if threading.current_thread() is threading.main_thread():
                self._owner = os.getpid()
                self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
                self._unraisable_hook, sys.unraisablehook = sys.unraisablehook, self._unraisable
        self._depth += 1
        try:
            yield self
        finally:
            self._depth -= 1
            if outermost:
                for signum, handler in self._previous.items():
                    signal.signal(signum, handler)
                if self._previous:
                    sys.unraisablehook = self._unraisable_hook
                self._previous = {}
                self.reset()
                self.owns_process = False

    @contextmanager
    def in_phase(self, name: str, *, deferred: bool = False) -> Iterator[None]:
        """The block is phase `name`; also usable as a decorator.

        A signal pending when the phase begins raises `Stop`, unless both this phase and the
        one around it defer it; leaving a deferred phase normally raises it too when the phase
        around it stops at once.
        """
        with self.handling():
            outer = self.current()
            self._phases.append(_Phase(name, deferred))
            try:
                if not (deferred and outer.deferred):
                    self.check()
                yield
            finally:
                self._phases.pop()
            if not self.current().deferred:
                self.check()

    def rename(self, name: str) -> None:
        """Name the current phase anew (after training, a method's base phase is evaluation)."""
        if self._phases:
            self._phases[-1].name = name


def masked_stop(err: BaseException) -> Stop | None:
    """The `Stop` that `err` was raised while handling, if any: cleanup code that fails while a
    `Stop` unwinds it (datasets' worker pool raises `TimeoutError` there) masks the stop."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, Stop):
            return err
        seen.add(id(err))
        err = err.__context__
    return None


def exit_process(code: int) -> NoReturn:
    """Exit with `code` once a stop has been recorded and reported: at once (logs and output
    flushed) when the entry script owns the process, else by `SystemExit`."""
    if not GUARD.owns_process:
        sys.exit(code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


GUARD = Guard()
handling = GUARD.handling
phase = GUARD.in_phase
stop_requested = GUARD.stop_requested
rename_phase = GUARD.rename
