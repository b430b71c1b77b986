"""One run from the command line: parse, check, run, and end it as distbench.runtime.outcome decides.

`launch/run.py` (what torchrun starts) and `distbench run` call `main`. Its imports are stdlib only until the
stop request is installed: a signal during the imports of torch must already mean "stop and say so".
"""

from __future__ import annotations

import sys

from distbench.runtime.stop import REQUEST, Stopped


def main(argv: list[str] | None = None) -> int:
    REQUEST.install()  # first (idempotent: launch/run.py installed it on its own first lines)
    import logging
    import os

    from distbench import config
    from distbench.runtime.outcome import Outcome, already_recorded

    rank0 = os.environ.get("RANK", "0") == "0"
    # Rank 0 speaks for the job: a warning every rank would give (a fixed head's shared rows) is printed once.
    logging.basicConfig(level=logging.INFO if rank0 else logging.ERROR, format="%(message)s")
    end = Outcome(REQUEST, argv, rank0)
    try:
        try:
            cfg = config.parse_args(argv)
            from distbench.runtime import checks  # imports torch

            checks.check(cfg, world_size=int(os.environ.get("WORLD_SIZE", "1")))
        except config.ConfigError as e:
            return config.fail(e, quiet=not rank0)
        end.set_config(cfg)
        if cfg.output.dry_run:
            from distbench.runtime import loop

            return _say(loop.describe(cfg)) if rank0 else 0
        if (done := already_recorded(cfg)) is not None:
            return _say(done) if rank0 else 0
        from distbench.runtime import loop

        return end.finished(loop.run(cfg, REQUEST, end.run_id))
    except Stopped as e:
        return end.stopped(e)
    except config.ConfigError as e:  # found once running: a checkpoint that cannot be resumed from
        return config.fail(e, quiet=not rank0)
    except Exception as e:  # a run that broke after it started is recorded, not lost
        return end.failed(e)
    finally:
        end.close()
        REQUEST.settled()  # how this process ends is decided: a signal now must not turn it into a death


def _say(text: str) -> int:
    """Print the answer of a run that trains nothing. A reader that has gone is no failure of the run: it must
    not turn into a `failed` record."""
    from distbench.config import reader_gone

    try:
        print(text, flush=True)
    except BrokenPipeError:
        return reader_gone()
    return 0


if __name__ == "__main__":
    sys.exit(main())
