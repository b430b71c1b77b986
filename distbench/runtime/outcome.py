"""How a run ends, decided in one place, so that no run ends without a trace.

Every job ends with exactly one of:
- the `ok` (or `diverged`) record, appended by rank 0 (a signal that comes later changes nothing);
- a resumable checkpoint that `latest` names (a stop with --checkpoint-dir): nothing appended, exit 75;
- a `failed` record that says why: the signal and the phase it came in (`stopped by SIGTERM during
  start-up`, `... during evaluation, after step 20 of 20`), or the error, in one line. When a rank fails,
  it leaves its one-line error in the job's store first; rank 0, whose own error is then only a
  consequence (a closed connection, torchrun's SIGTERM), records the failed rank's error instead.

Imports nothing heavy at module level: a stop during start-up is handled before torch has loaded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from distbench import config, results
from distbench.config import DataError, StorageError
from distbench.runtime.stop import EXIT_STOPPED, START_UP, Stopped, StopRequest, hold

log = logging.getLogger("distbench")

EXIT_FAILED = 1


def one_line(error: BaseException) -> str:
    """`Type: message` of `error` and of each error it was raised from, as one line. An error re-raised by a
    DataLoader worker carries the worker's traceback in its message: only its last line (the cause) is kept."""
    parts, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = str(error)
        if "Original Traceback" in text:  # torch.utils.data's ExceptionWrapper: the cause is the last line
            text = [line for line in text.splitlines() if line.strip()][-1]
            text = re.sub(r"^[\w.]+: ", "", text)
        parts.append(f"{type(error).__name__}: {' '.join(text.split())}")
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return " (from ".join(parts) + ")" * (len(parts) - 1)


class Outcome:
    """The end of one process of a run. `request` is the process's stop request; rank 0 writes."""

    def __init__(self, request: StopRequest, argv: Sequence[str] | None, rank0: bool) -> None:
        self.request, self.argv, self.rank0 = request, argv, rank0
        self.cfg: config.RunConfig | None = None
        self.started_at = results.now()
        self.run_id: str | None = None
        self.writing = self.recorded = False
        request.on_stop_at_once = self._stopped_at_once
        request.on_start_up(self._stopped_in_start_up)

    # ------------------------------------------------------------------------------------------ facts
    def config(self) -> config.RunConfig | None:
        """The run's config; for a stop before it was parsed, parsed now (a bad one: None, no record)."""
        if self.cfg is None:
            try:
                self.cfg = config.parse_args(self.argv)
            except (config.ConfigError, SystemExit):
                return None
        return self.cfg

    def set_config(self, cfg: config.RunConfig) -> None:
        """Called once the config is known: the run's id is fixed now, so a failed record and the ok record of
        a resumed run carry the same one."""
        from distbench.runtime.checkpoint import read_latest, same_run

        self.cfg = cfg
        latest = read_latest(cfg.output.checkpoint_dir) if cfg.output.checkpoint_dir else None
        ours = latest["run_id"] if latest and same_run(latest, cfg.to_dict()) else None  # not a continued run's
        self.run_id = ours or cfg.output.run_id or results.new_run_id(self.started_at)

    def in_force(self) -> dict[str, Any] | None:
        """The checkpoint a rerun would resume from (`latest`), or None."""
        cfg = self.config()
        if cfg is None or not cfg.output.checkpoint_dir:
            return None
        from distbench.runtime.checkpoint import read_latest

        try:
            return read_latest(cfg.output.checkpoint_dir)
        except Exception:  # an unreadable pointer resumes nothing
            return None

    def _append_failed(self, message: str) -> None:
        cfg = self.config()
        if cfg is None or not self.rank0 or self.recorded or cfg.output.dry_run:  # a dry run records nothing
            return
        run_id = self.run_id or cfg.output.run_id or f"failed-{results.new_run_id(self.started_at)}"
        self._append(results.failed_record(run_id, cfg.to_dict(), message, self.started_at))

    def _append(self, record: dict[str, Any]) -> bool:
        """Append `record` to the results file. One that cannot be written (a full disk) is not lost: it goes to
        stdout as one JSON line, for the user to append once there is room, and the reason to stderr."""
        self.writing = True
        try:
            results.append(self.cfg.output.out, record)
            return True
        except OSError as e:
            try:
                print(json.dumps(results.finite(record), allow_nan=False), flush=True)
                shown = "the record is the JSON line above on stdout"
            except OSError as printing:  # stdout a file on the same full disk
                shown = f"nor could it be printed whole ({one_line(printing)})"
            message = f"cannot append the {record['status']} record to {self.cfg.output.out} ({one_line(e)})"
            latest = self.in_force() if record["status"] != "failed" else None
            if latest is not None:  # the end-of-training checkpoint: a rerun only evaluates and writes the record
                message += (
                    f"; the checkpoint of step {latest.get('step')} in {self.cfg.output.checkpoint_dir} stays in "
                    "force: once there is room, the same command writes the record without training again"
                )
            with contextlib.suppress(OSError):  # stderr, too, may be a file on that disk
                print(f"run.py: error: {message}; {shown}", file=sys.stderr, flush=True)
            return False
        finally:
            self.recorded, self.writing = True, False

    # ------------------------------------------------------------------------------------------ endings
    def finished(self, record: dict[str, Any]) -> int:
        """The run's own record: rank 0 appends it and marks the checkpoint as recorded."""
        if self.rank0:
            from distbench.runtime import loop

            hold("record", self.request)
            if not self._append(record):
                return EXIT_FAILED
            if self.cfg.output.checkpoint_dir:
                from distbench.runtime.checkpoint import mark_recorded

                try:
                    mark_recorded(self.cfg.output.checkpoint_dir, self.cfg.output.out)
                except OSError as e:  # the record is written: the run is complete all the same
                    log.warning(
                        "the record is written, but %s could not be marked as recorded (%s): the same command, "
                        "run again, would evaluate once more and append a second record of run %s",
                        self.cfg.output.checkpoint_dir, one_line(e), record["run_id"],
                    )  # fmt: skip
            log.info("%s\n  record       appended to %s", loop.summary(record), self.cfg.output.out)
            if self.request.signal is not None:
                log.info("(%s came after the run had finished: its record is written)", self.request.signal)
        return 0 if record["status"] == "ok" else EXIT_FAILED

    def stopped(self, stop: Stopped, peers: bool = True) -> int:
        """A signal: say where, and leave the checkpoint in force or a failed record."""
        peer = self._peer_failure() if peers else None
        if peer is not None:  # a peer failed and torchrun stopped this rank: the peer's error is the cause
            return self._fail(peer, stop)
        cfg = self.config()
        if cfg is None or cfg.output.dry_run:  # no run to record
            print(f"run.py: {stop.where()}", file=sys.stderr, flush=True) if self.rank0 else None
            return EXIT_STOPPED
        latest = self.in_force() if stop.checkpoint is None else None
        if stop.checkpoint is None and latest is not None:
            message = (
                f"{stop.where()}: the checkpoint of step {latest.get('step')} in {cfg.output.checkpoint_dir} "
                "stays in force; run the same command again to resume"
            )
        else:
            message = stop.describe(cfg.output.checkpoint_dir)
        if self.rank0:
            log.warning("%s", message)
            if stop.checkpoint is None and latest is None:
                self._append_failed(message)
            else:
                _mark_stopped(cfg, message)
        if stop.agreed:
            from distbench.runtime.engines import barrier

            barrier()  # rank 0's record is written before any rank exits and torchrun ends the others
        return EXIT_STOPPED

    def failed(self, error: Exception) -> int:
        """An error after the run started: recorded in one line (with the traceback logged for a bug)."""
        message = self._describe(error)
        peer = self._peer_failure()
        if peer is not None:
            return self._fail(peer, error)
        storage = isinstance(error, StorageError)
        if self.request.signal is not None:  # the stop came first: a peer that stopped, a loader worker ended
            if storage:  # a save the signal asked for: the next one will meet it too
                log.error("%s", message)
            where = self.request.phase if self.request.phase != START_UP else START_UP
            return self.stopped(Stopped(self.request.signal, where), peers=False)
        if storage and (latest := self.in_force()) is not None:
            message += (
                f"; the checkpoint of step {latest.get('step')} stays in force: once there is room, run the same "
                "command again to resume"
            )
        _note_failure(message)
        expected = storage or isinstance(error, DataError) or "did not answer within" in message
        # A full disk may be one node's own: every rank that meets it says so.
        if self.rank0 or not expected or storage:
            if expected:
                log.error("%s", message)
            else:
                log.exception("run failed: %s", message)
        self._append_failed(message)
        return EXIT_FAILED

    def _fail(self, peer: str, own: BaseException) -> int:
        if self.rank0:
            log.error("%s", peer)
            self._append_failed(f"{peer} (rank 0 then: {self._describe(own)})")
        return EXIT_FAILED

    def _describe(self, error: BaseException) -> str:
        message = one_line(error)
        cfg = self.config()
        if cfg is not None and ("timed out" in message.lower() or "timeout" in message.lower()):
            message = (
                f"a peer did not answer within --pg-timeout-s {cfg.dist.pg_timeout_s:g} s (hung or gone): {message}"
            )
        return message

    def _peer_failure(self) -> str | None:
        failures = _peer_failures()
        return "; ".join(f"rank {r} failed: {m}" for r, m in sorted(failures.items())) if failures else None

    def _stopped_in_start_up(self, stop: Stopped) -> None:
        """From the stop watcher: nothing to save yet, and the main thread may be blocked (a rendezvous with a
        peer that has stopped): rank 0 leaves the record, and the process ends here."""
        try:
            if self.rank0 and not self.recorded:
                self.stopped(stop, peers=False)
        finally:
            os._exit(EXIT_STOPPED)

    def _stopped_at_once(self, message: str) -> None:
        """A second Ctrl-C: leave a record unless a checkpoint or the run's own record is the trace. Not while
        the main thread is appending: its record is the trace (and its lock on the file is held)."""
        if not self.rank0:
            return
        if self.writing or self.recorded:
            print(f"run.py: {message}", file=sys.stderr, flush=True)
            return
        latest = self.in_force()
        if latest is not None:
            message += f"; the checkpoint of step {latest.get('step')} stays in force"
            _mark_stopped(self.config(), message)
        else:
            self._append_failed(message)
        print(f"run.py: {message}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if _ENGINES in sys.modules:  # never imported: there is no process group to close
            from distbench.runtime.engines import close_distributed

            close_distributed()


def _mark_stopped(cfg: config.RunConfig, message: str) -> None:
    from distbench.runtime.checkpoint import mark_stopped

    try:
        mark_stopped(cfg.output.checkpoint_dir, message)
    except Exception as e:  # the checkpoint stays in force either way; only a sweep's reading of it suffers
        log.warning("could not note the stop in %s: %s", cfg.output.checkpoint_dir, e)


def already_recorded(cfg: config.RunConfig) -> str | None:
    """The run in --checkpoint-dir is complete and its record written: say so (nothing to run, exit 0)."""
    if not cfg.output.checkpoint_dir:
        return None
    from distbench.runtime.checkpoint import read_latest, same_run

    latest = read_latest(cfg.output.checkpoint_dir)
    if not latest or not latest.get("recorded") or not same_run(latest, cfg.to_dict()):
        return None  # other --steps than the recorded run: it goes on from it (distbench.runtime.checkpoint.continues)
    return (
        f"run {latest['run_id']} is already complete in {cfg.output.checkpoint_dir}: its record is in "
        f"{latest['recorded']}; nothing to do (use another --checkpoint-dir to run it again)"
    )


# --------------------------------------------------------------------------------- peers' one-line errors
# In the job's store (`runtime.engines`). A process group exists only once the engines are imported (they make it),
# so nothing is imported here to ask: an error in importing them must still reach the record, not happen again.
_ENGINES = "distbench.runtime.engines"


def _note_failure(message: str) -> None:
    if _ENGINES in sys.modules:
        from distbench.runtime.engines import note_failure

        note_failure(message)


def _peer_failures() -> dict[int, str]:
    if _ENGINES not in sys.modules:
        return {}
    from distbench.runtime.engines import peer_failures

    return peer_failures()
