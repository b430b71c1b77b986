"""One benchmark run: build, warm up, time, evaluate, measure exposed communication, make the record.

Timing follows nanoGPT's bench.py and timm's benchmark.py: warm-up steps first (they include
iteration 0, after which DDP rebuilds its buckets), then a window of individually timed steps
(`distbench.runtime.timing.StepTimer`: on GPU, CUDA events bracket each step and are read after one synchronise at
the end, so timing neither stalls the host nor hides asynchronous work).
"""

from __future__ import annotations

import logging
import math
import os
import resource
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch

from distbench import results
from distbench.comm.expected import traffic_for
from distbench.comm.meter import StepTraffic
from distbench.config import RunConfig
from distbench.model import build_model
from distbench.model.contracts import LanguageModel, example_input, positions
from distbench.model.counts import param_counts
from distbench.results import SCHEMA, environment, new_run_id, now
from distbench.results.curves import flat
from distbench.runtime.checkpoint import Checkpoints, LoopState, same_run
from distbench.runtime.data import Batch, Shard, build_dataset
from distbench.runtime.engines import (
    Engine,
    Place,
    StopVote,
    all_reduce,
    barrier,
    build_engine,
    gather_objects,
    init_distributed,
    replicas_identical,
)
from distbench.runtime.optim import autocast, autocast_dtype
from distbench.runtime.stop import REQUEST, Stopped, StopRequest, hold
from distbench.runtime.timing import StepTimer, quantile

log = logging.getLogger("distbench")


class Steps(NamedTuple):
    times_ms: list[float]  # one per step taken
    loss: torch.Tensor  # the last step's, detached
    traffic: list[StepTraffic]  # the meter's record of each step
    logged: list[int | None]  # the engine's comms-logger total after each step


def run_steps(
    engine: Engine, batches: Iterator[Batch], n: int, progress, stop: Callable[[], bool] | None = None
) -> Steps:
    """Up to n metered optimizer steps. Fetching the batch is part of the step: a loader that cannot keep
    up shows in the throughput, as it would in training. `stop()` is asked after each step, outside its
    time; True ends the run of steps early (fewer times come back)."""
    timer, loss, traffic, logged = StepTimer(engine.place.device), torch.tensor(float("nan")), [], []
    slow = slow_rank_seconds()
    timer.mark()
    for _ in range(n):
        engine.meter.start_step()
        if slow:
            time.sleep(slow)  # tests only: this rank computes longer (DISTBENCH_SLOW_RANK)
        x, y = next(batches)
        loss = engine.step(x, y)
        traffic.append(engine.meter.end_step())
        timer.mark()
        logged.append(engine.logged_bytes())
        progress.update()
        if stop is not None:
            if stop():
                break
            timer.restart()
    times = timer.times_ms()
    engine.meter.resolve()  # after the timer's own synchronisation: no second one
    return Steps(times, loss, traffic, logged)


def slow_rank_seconds() -> float:
    """Tests only, by environment: DISTBENCH_SLOW_RANK="<rank>:<seconds>" makes that rank spend the seconds
    in every step before its forward, as a slower rank would; 0 otherwise (always, outside tests)."""
    spec = os.environ.get("DISTBENCH_SLOW_RANK")
    if not spec:
        return 0.0
    rank, _, seconds = spec.partition(":")
    return float(seconds) if rank == os.environ.get("RANK", "0") else 0.0


def train_steps(
    engine: Engine,
    batches: Iterator[Batch],
    state: LoopState,
    tc,
    progress,
    stop: Callable[[], bool],
    save: Callable[[str], object] | None,
    every: int,
    request: StopRequest | None = None,
    eval_steps: int = 0,
    curve_point: Callable[[], None] | None = None,
) -> None:
    """Warm-up and timed steps from `state.step` on, in runs that end at the warm-up's end, at each
    checkpoint (`save` every `every` steps) and on an agreed stop. Timed steps go into `state`; a resumed
    process's first `engine.settle_steps` are left out of the window: they are cold, and DDP's iteration 0
    (buckets rebuilt) or ZeRO-3's trace of its parameter fetches. `request` learns the phase. Every
    `eval_steps` steps, `curve_point()` evaluates (between timed runs of steps, so outside their times)."""
    end = state.ended_at or tc.warmup_steps + tc.steps
    settled = state.step + engine.settle_steps if state.step > 0 else 0  # a resumed process's first steady step
    due = curve_point is not None and eval_steps and 0 < state.step < end and state.step % eval_steps == 0
    if due and (not state.curve or state.curve[-1]["step"] != state.step):
        curve_point()  # a stop during this point's evaluation saved its step without it
        if state.ended_at is not None:
            return
    while state.step < end:
        timed = state.step >= tc.warmup_steps
        if request is not None:
            request.enter("training" if timed else "warm-up")
            hold(request.phase, request)
        until = end if timed else tc.warmup_steps
        for period in (every, eval_steps):
            if period:
                until = min(until, (state.step // period + 1) * period)
        if timed and state.step == tc.warmup_steps and engine.place.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(engine.place.device)
        logged = [engine.logged_bytes()]
        done = run_steps(engine, batches, until - state.step, progress, stop)
        taken = len(done.times_ms)
        if timed:
            # (unless it is the window's last step: a window is never empty)
            skip = max(0, min(settled - state.step, taken, end - state.step - 1))
            state.timed_ms += done.times_ms[skip:]
            state.traffic += done.traffic[skip:]
            state.untimed_steps += skip
            if logged[0] is not None:  # the logger's window is the meter's
                logged += done.logged
                state.logged_bytes += logged[taken] - logged[skip]
                state.logged_steps += taken - skip
        state.step += taken
        state.loss = done.loss.float().item()
        if state.step < until:  # the ranks agreed to stop
            return
        if curve_point is not None and eval_steps and state.step % eval_steps == 0 and state.step < end:
            curve_point()  # before a save at the same step, so that the checkpoint holds the point
            if state.ended_at is not None:
                return
        if save is not None and every and state.step % every == 0 and state.step < end:
            if request is not None:
                request.enter("training" if state.step >= tc.warmup_steps else "warm-up")
            save(f"every {every} steps")


def rank_times(every: list[list[tuple]]) -> tuple[list[dict[str, Any]], float | None]:
    """Where each rank's timed steps went, from `every` (per rank, per step: compute, wait, optimizer ms), as
    p50s per rank (perf.ranks), and exposed communication measured directly: per step, the wait of the rank
    that computed longest (it waits for the collectives alone; the others also wait for it), median over
    steps (perf.exposed_comm_ms_direct). None where a split is unknown (steps from an older checkpoint)."""

    def p50(values: list) -> float | None:
        known = [v for v in values if v is not None]
        return quantile(known, 0.5) if known else None

    ranks = [
        {"rank": r, **{k: p50([s[i] for s in steps]) for i, k in enumerate(("compute_ms", "wait_ms", "optimizer_ms"))}}
        for r, steps in enumerate(every)
    ]
    waits = []
    for step in zip(*every, strict=False):
        if all(s[0] is not None and s[1] is not None for s in step):
            waits.append(max(step, key=lambda s: s[0])[1])
    return ranks, (quantile(waits, 0.5) if waits else None)


def profile_steps(engine: Engine, batches: Iterator[Batch], steps: int, directory: Path) -> dict[str, Any]:
    """`steps` extra steps (after one of warm-up) under torch.profiler, each a ProfilerStep#N with ranges for
    forward, backward, optimizer and each bucket's reduction; written per rank as a Chrome trace,
    `directory/rank-<r>.json.gz`, which carries `distributedInfo` (rank, world size) for HTA."""
    from torch.profiler import ProfilerActivity, profile, schedule

    from distbench.runtime import timing

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if engine.place.device.type == "cuda" else [])
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"rank-{engine.place.rank}.json.gz"

    def export(prof) -> None:  # at the end of the active window: events of earlier cycles are gone by exit
        prof.export_chrome_trace(str(path))

    timing.PROFILING = True
    try:
        with profile(
            activities=activities, schedule=schedule(wait=0, warmup=1, active=steps), on_trace_ready=export
        ) as prof:
            for _ in range(steps + 1):
                engine.meter.start_step()
                x, y = next(batches)
                engine.step(x, y)
                engine.meter.end_step()
                prof.step()
    finally:
        timing.PROFILING = False
    engine.meter.resolve()
    return {"dir": str(directory), "steps": steps}


def agreed_batches(
    batches: Iterator[Batch], vote: StopVote, request: StopRequest, collective: bool, backbone, device
) -> Iterator[Batch | None]:
    """This rank's held-out batches while any rank has one, agreed batch by batch with a stop request: every
    rank stops at the same batch when any was asked to (`Stopped` is raised by the caller). A rank that has
    run out yields empty batches where evaluation runs collectives (a sharded head, ZeRO-3: its peers wait
    for it in them), else None (nothing to compute)."""
    x_empty = example_input(backbone, 0, device)
    y_empty = torch.empty(0, dtype=torch.long, device=device)
    while True:
        batch = next(batches, None)
        more, stop = vote.agree([batch is not None, request.signal is not None])
        if stop:
            raise _EvalStop
        if not more:
            return
        yield batch if batch is not None else ((x_empty, y_empty) if collective else None)


class _EvalStop(Exception):
    pass


@torch.no_grad()
def evaluate(engine: Engine, dataset, amp_dtype, vote: StopVote, request: StopRequest) -> dict[str, Any] | None:
    """Top-1/top-5 over the held-out set; each rank scores its own share and the counts are summed.
    None: the ranks agreed to stop (a signal) before the end."""
    model, device = engine.module, engine.place.device
    model.eval()
    stats = torch.zeros(4, dtype=torch.float64)  # correct@1, correct@5, samples, loss sum
    batches = agreed_batches(iter(dataset.eval()), vote, request, engine.collective_eval, model.backbone, device)
    try:
        for batch in batches:
            if batch is None:
                continue
            x, y = batch
            with autocast(device, amp_dtype):
                top, losses = engine.eval_batch(x, y, 5)
            hit = top == y[:, None]
            stats += torch.tensor(
                [hit[:, 0].sum().item(), hit.any(1).sum().item(), len(y), losses.float().sum().item()],
                dtype=torch.float64,
            )
    except _EvalStop:
        return None
    finally:
        model.train()
    oracle = [f() if f is not None else 0 for f in (dataset.oracle_hits, dataset.oracle_loss_sum)]
    stats = all_reduce(torch.cat([stats, torch.tensor(oracle, dtype=torch.float64)]).to(device)).cpu()
    n = max(stats[2].item(), 1)
    text = isinstance(model.backbone, LanguageModel)
    return {
        "top1": stats[0].item() / n,
        "top5": stats[1].item() / n,
        "oracle_top1": stats[4].item() / n if dataset.oracle_hits is not None else None,
        "eval_samples": int(stats[2].item()),
        "eval_loss": stats[3].item() / n,
        "oracle_loss": stats[5].item() / n if dataset.oracle_loss_sum is not None else None,
        "perplexity": math.exp(min(stats[3].item() / n, 700.0)) if text else None,
    }


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA allocator peak on GPU; peak resident set size of this process on CPU (Linux reports KiB)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class Progress:
    """Rank 0's progress through the steps: tqdm's bar on a terminal; elsewhere (a Slurm log, CI) one line every
    `every_s` seconds, step, samples/s and time left, so a log shows a run is alive before it ends. A `capped`
    run (one that may end when its curve is flat) counts to its cap, and says so."""

    def __init__(
        self, place: Place, total: int, samples_per_step: int, every_s: float = 30.0, capped: bool = False
    ) -> None:
        self.total, self.samples_per_step, self.every_s = total, samples_per_step, every_s
        self.capped = capped
        self.quiet = place.rank != 0
        self.bar = None
        if not self.quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="steps (at most)" if capped else "steps", leave=False)
        self.step, self.started, self.last = 0, time.monotonic(), time.monotonic()
        self.first_step = 0

    def update(self, n: int = 1) -> None:
        self.step += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if self.quiet or now - self.last < self.every_s:
            return
        self.last = now
        done = self.step - self.first_step
        rate = done / (now - self.started) if now > self.started else 0.0
        at_most = "at most " if self.capped else ""
        left = f"{at_most}{(self.total - self.step) / rate / 60:,.1f} min left" if rate > 0 else "time left unknown"
        rate *= self.samples_per_step
        log.info("step %d of %s%d, %.1f samples/s, %s", self.step, at_most, self.total, rate, left)

    def resume_at(self, step: int) -> None:
        """Start counting at `step` (a resumed run): its rate is of this process's steps only."""
        self.update(step)
        self.first_step = step

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def run(cfg: RunConfig, request: StopRequest = REQUEST, run_id: str | None = None) -> dict[str, Any]:
    """Run the benchmark and return its record (every rank returns it; rank 0 writes it). A signal raises
    `Stopped` at the next point where the ranks agree (see distbench.runtime.stop); the caller says what it means."""
    started_at = now()
    place = init_distributed(cfg.dist.dist_backend, cfg.dist.pg_timeout_s)
    hold("process-group", request)
    amp_dtype = autocast_dtype(cfg.train.precision, place.device)
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
    model = build_model(cfg.model, cfg.freeze, seed=cfg.train.seed, head_dtype=amp_dtype or torch.float32)
    params = param_counts(model)  # the whole model's, before an engine shards any of it
    tc = cfg.train
    dataset = build_dataset(
        cfg.data,
        cfg.model.num_classes,
        model.input_shape,
        tc.batch_size,
        Shard(place.rank, place.world_size, place.device),
        tc.seed,
    )
    engine = build_engine(cfg, model, place)
    total = tc.warmup_steps + tc.steps
    checkpoints = None
    if cfg.output.checkpoint_dir:
        checkpoints = Checkpoints(
            cfg.output.checkpoint_dir, place.rank, place.world_size, place.device, cfg.to_dict(), barrier
        )
    state = checkpoints.load(engine) if checkpoints else None
    fresh_id = run_id or cfg.output.run_id or new_run_id(started_at)
    if state is None:
        state = LoopState(run_id=fresh_id, started_at=started_at)
    elif not same_run(checkpoints.latest, checkpoints.config):  # the same training, other --steps: a run of its own
        log.info("continuing run %s from %s at step %d, to %d", state.run_id, cfg.output.checkpoint_dir, state.step,
                 total)  # fmt: skip
        state.continued_from = state.run_id
        state.run_id, state.started_at = fresh_id, started_at
    else:
        log.info("resumed from %s at step %d of %d", cfg.output.checkpoint_dir, state.step, total)
    batches = dataset.train(start=state.step)
    vote = StopVote(cfg.dist.pg_timeout_s)
    hold("start-up", request)
    # From here on a signal is acted on where the ranks agree: after a step, a save, an evaluation batch.
    request.enter("warm-up" if state.step < tc.warmup_steps else "training")

    def stopped(phase: str, checkpoint: Path | None) -> Stopped:
        return Stopped(request.signal or "a peer's signal", phase, state.step, total, checkpoint, agreed=True)

    def save(reason: str) -> Path | None:
        if checkpoints is None:
            return None
        with request.during("checkpoint save"):
            saved = checkpoints.save(engine, state, reason)
        # A signal during a periodic save: stop on this checkpoint rather than after one more step.
        if reason.startswith("every") and vote.agree([request.signal is not None])[0]:
            raise stopped("checkpoint save", saved)
        return saved

    # samples per class, each step; a language model predicts at every position: tokens per vocabulary entry
    seen_per_step = tc.batch_size * place.world_size * positions(model.backbone) / cfg.model.num_classes

    def ends_flat() -> bool:
        # Once the timed window holds a step (a record needs one; a resumed process leaves its first out).
        return bool(tc.until_flat and state.timed_ms and flat(state.curve, tc.until_flat, cfg.model.num_classes))

    # A resume judges the curve so far by the rule in force now (added, changed or removed since the checkpoint
    # was saved): flat, the run ends where it resumed; not (or no rule), it trains on towards --steps.
    state.ended_at = state.step if ends_flat() else None

    def curve_point() -> None:
        """Evaluate now, into the learning curve; a stop agreed during it stops the run on a checkpoint."""
        with request.during("evaluation"):
            hold("curve-point", request)
            accuracy = evaluate(engine, dataset, amp_dtype, vote, request)
        if accuracy is None:
            raise stopped("evaluation", save(request.signal or "a peer's signal"))
        state.curve.append(
            {"step": state.step, "samples_per_class": state.step * seen_per_step}
            | {k: accuracy[k] for k in ("top1", "top5", "eval_loss")}
        )
        if ends_flat():
            log.info("the learning curve is flat at step %d of %d (--until-flat %g): ending", state.step, total,
                     tc.until_flat)  # fmt: skip
            state.ended_at = state.step

    # --eval-every K samples per class: a step shows every class B x W / C times on average.
    eval_steps = max(1, round(tc.eval_every / seen_per_step)) if tc.eval_every else 0
    width = tc.batch_size * place.world_size
    with Progress(place, total + tc.nosync_steps, width, capped=bool(tc.until_flat)) as progress:
        progress.resume_at(state.step)
        train_steps(
            engine,
            batches,
            state,
            tc,
            progress,
            lambda: vote(request.signal is not None),
            save,
            cfg.output.checkpoint_every,
            request,
            eval_steps,
            curve_point,
        )
        vote.close()
        if state.step < (state.ended_at or total):
            raise stopped(request.phase, save(request.signal or "a peer's signal"))
        # A run stopped from here on resumes from this checkpoint and only evaluates.
        end = save("end")
        timed_ms = state.timed_ms
        logged = state.logged_bytes / state.logged_steps if state.logged_steps else None
        in_sync = replicas_identical(engine.replicated_parameters())
        final_loss = all_reduce(torch.tensor([state.loss], device=place.device)).item() / place.world_size
        request.enter("evaluation")
        hold("evaluation", request)
        accuracy = evaluate(engine, dataset, amp_dtype, vote, request)
        if accuracy is None:
            raise stopped("evaluation", end)
        # Last, because steps without sync let the replicas drift apart.
        nosync, nosync_ms = engine.no_sync(), []
        if nosync is not None and tc.nosync_steps:
            request.enter("no-sync timing")
            with nosync:
                done = run_steps(engine, batches, tc.nosync_steps, progress, lambda: vote(request.signal is not None))
            vote.close()
            if len(done.times_ms) < tc.nosync_steps:
                raise stopped("no-sync timing", end)
            nosync_ms = done.times_ms
        profile = None
        if cfg.output.profile_dir:
            request.enter("profiling")
            profile = profile_steps(engine, batches, cfg.output.profile_steps, Path(cfg.output.profile_dir))
    # Complete: from here on a signal no longer changes how the run ends.
    request.enter("record")
    engine.close()
    peak = all_reduce(torch.tensor([peak_memory_bytes(place.device)], device=place.device), "max").item()
    hosts = gather_objects(socket.gethostname())
    skipped = None
    if dataset.skipped is not None:
        skipped = sorted(set().union(*gather_objects(sorted(dataset.skipped()))))

    step_ms = {"p50": quantile(timed_ms, 0.5), "p90": quantile(timed_ms, 0.9), "mean": statistics.fmean(timed_ms)}
    exposed = step_ms["p50"] - quantile(nosync_ms, 0.5) if nosync_ms else None
    comm = engine.meter.summary(state.traffic, place.world_size, engine.reduction_layout())
    ranks, direct = rank_times(gather_objects([(t.compute_ms, t.wait_ms, t.optimizer_ms) for t in state.traffic]))
    comm = {
        "payload_bytes_per_step": comm.pop("payload_bytes_per_step"),
        "expected_bytes_per_step": engine.expected_bytes_per_step,
        **comm,
        "hook": engine.hook_name,
        "logger_bytes_per_step": logged,
        "replicas_identical": in_sync,
        "bucket_cap_mb": engine.bucket_cap_mb,
    }
    status, error = "ok", None
    if not math.isfinite(final_loss):
        status, error = "diverged", f"loss is {final_loss} after {len(timed_ms)} timed steps"
    if not in_sync:
        status, error = "failed", "replicas differ after the timed steps: gradient synchronisation is broken"
    metered = sum(comm["collectives"].values())
    if logged is not None and logged != metered:
        status, error = "failed", f"comm validation: the meter counted {metered} bytes/step, the comms logger {logged}"
    return {
        "schema": SCHEMA,
        "run_id": state.run_id,
        "status": status,
        "error": error,
        "started_at": state.started_at,
        "finished_at": now(),
        "config": results.portable(cfg.to_dict()),
        "env": environment(place.device, place.world_size, place.backend, hosts),
        "params": params,
        "comm": comm,
        "perf": {
            "samples_per_s": tc.batch_size * place.world_size * len(timed_ms) / (sum(timed_ms) / 1e3),
            "step_time_ms": step_ms,
            "exposed_comm_ms": exposed,
            "exposed_comm_ms_direct": direct,
            "ranks": ranks,
            "profile": profile,
            "peak_memory_bytes": int(peak),
            "timed_steps": len(timed_ms),
            "warmup_steps": tc.warmup_steps,
            "untimed_steps": state.untimed_steps,
            "resumed_from_steps": state.resumed_from,
            "continued_from": state.continued_from,
            # split: the window's steps ran in more than one process (resumed inside it)
            "timed_window": "split" if any(s > tc.warmup_steps for s in state.resumed_from) else "continuous",
        },
        "accuracy": {
            **accuracy,
            "final_loss": final_loss,
            # the final evaluation last (once: a run that ended on a flat curve evaluated at this step already)
            "curve": [
                *(p for p in state.curve if p["step"] < state.step),
                {"step": state.step, "samples_per_class": state.step * seen_per_step}
                | {k: accuracy[k] for k in ("top1", "top5", "eval_loss")},
            ],
            "flat_at_step": state.ended_at,
        },
        "data": {
            "skipped_images": None if skipped is None else len(skipped),
            "skipped_files": (skipped or [])[: results.SKIPPED_SHOWN],
        },
    }


def timing_warnings(record: dict[str, Any]) -> list[str]:
    """Why this record's timings may mean little, where the run can tell."""
    env, precision = record["env"], record["config"]["train"]["precision"]
    warnings = []
    on_cpu = env.get("cuda") is None
    per_host = env["world_size"] // max(len(env.get("hosts") or [1]), 1)
    cores = env.get("cpu_cores")
    if on_cpu and cores and per_host > cores:
        warnings.append(f"{per_host} ranks share {cores} CPU cores on a host: step times include waiting for a core")
    if on_cpu and precision == "fp16":
        warnings.append("fp16 on a CPU is emulated (about 20x slower than fp32 here): its step times say little")
    return warnings


def mb(nbytes: float) -> str:
    """Bytes for people: decimal MB or GB (the exact count stays beside it where exactness matters)."""
    return f"{nbytes / 1e9:,.2f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:,.2f} MB"


def text_line(a: dict[str, Any]) -> str:
    """A language model's held-out loss per token, its perplexity, and the Bayes-optimal loss where known."""
    if a.get("perplexity") is None or a.get("eval_loss") is None:
        return ""
    oracle = "" if a.get("oracle_loss") is None else f" (oracle {a['oracle_loss']:.3f})"
    return f"\n  text         held-out loss {a['eval_loss']:.3f} nats/token{oracle}, perplexity {a['perplexity']:,.1f}"


def flat_line(record: dict[str, Any]) -> str:
    at, t = record["accuracy"].get("flat_at_step"), record["config"]["train"]
    if at is None:
        return ""
    total = t["warmup_steps"] + t["steps"]
    return f"\n  ended        at step {at:,} of {total:,}: the curve is flat (--until-flat {t['until_flat']:g})"


def summary(record: dict[str, Any]) -> str:
    c, p, a = record["comm"], record["perf"], record["accuracy"]
    match = "==" if c["payload_bytes_per_step"] == c["expected_bytes_per_step"] else "!="
    exposed = "n/a" if p["exposed_comm_ms"] is None else f"{p['exposed_comm_ms']:.1f} ms"
    oracle = "" if a.get("oracle_top1") is None else f" (oracle {a['oracle_top1']:.3f})"
    cfg, env = record["config"], record["env"]
    m, freeze = cfg["model"], cfg["freeze"]["freeze"]
    buckets = c["buckets_per_step"]
    return (
        f"{record['status']}: {record['run_id']}: {m['model']}, {m['num_classes']:,} classes, {m['head']} head"
        f"{'' if freeze == 'none' else f', freeze {freeze}'}, {cfg['dist']['backend']} on {env['world_size']} "
        f"{'rank' if env['world_size'] == 1 else 'ranks'} ({env['device']})\n"
        f"  bytes/step   payload {c['payload_bytes_per_step']:,} {match} expected {c['expected_bytes_per_step']:,}"
        f" ({mb(c['payload_bytes_per_step'])}) in {buckets:g} bucket{'' if buckets == 1 else 's'} ({c['hook']})\n"
        f"  throughput   {p['samples_per_s']:,.1f} samples/s; step p50 {p['step_time_ms']['p50']:.1f} ms,"
        f" p90 {p['step_time_ms']['p90']:.1f} ms; exposed comm {exposed}\n"
        f"  accuracy     top-1 {a['top1']:.3f}, top-5 {a['top5']:.3f}{oracle} on {a['eval_samples']} held-out"
        f" {'tokens' if a.get('perplexity') is not None else 'samples'}; final loss {a['final_loss']:.4f}"
        + text_line(a)
        + flat_line(record)
    ) + "".join(f"\n  warning      {w}" for w in timing_warnings(record))


def describe(cfg: RunConfig, world_size: int | None = None) -> str:
    """Parameter counts and every collective a step would send (`--dry-run`), from the configured model built on
    the meta device: seconds and no memory for any model and class count. What depends on the number of ranks
    (FSDP's and ZeRO-3's padding, the sharded head's collectives) is given at `world_size` ranks: the job's
    own under torchrun, else 8 (one node), and the line says which."""
    import os

    n = world_size or int(os.environ.get("WORLD_SIZE", "0")) or 8
    logging.disable(logging.WARNING)  # the fixed heads' warning about shared rows: a dry run trains nothing
    try:
        with torch.device("meta"):
            model = build_model(cfg.model, cfg.freeze, seed=cfg.train.seed)
    finally:
        logging.disable(logging.NOTSET)
    counts = param_counts(model)
    traffic = traffic_for(cfg, model, n)
    lines = [
        f"{cfg.model.model} + {cfg.model.head} head, {cfg.model.num_classes:,} classes, {cfg.dist.backend} "
        f"({engine_label(cfg)})"
    ]
    lines += [
        f"  params.{k:<21} {v:>14,}" if isinstance(v, int) else f"  params.{k:<21} {v:>14.4f}"
        for k, v in counts.items()
    ]
    lines.append(f"  expected bytes/step          {traffic.payload_bytes:>14,} (payload, at {n} ranks of batch "
                 f"{cfg.train.batch_size})")  # fmt: skip
    lines += [
        f"    {c.op:<24} {c.bytes:>14,}  {c.what}{'' if c.payload else ' (not payload)'}" for c in traffic.collectives
    ]
    if cfg.dist.backend == "deepspeed":
        lines.append("    (ZeRO's parameter all-gathers are counted by a run, not predicted here)")
    return "\n".join(lines)


def engine_label(cfg: RunConfig) -> str:
    """The engine as a record's `comm.hook` names it."""
    d = cfg.dist
    return {"ddp": d.comm_hook, "fsdp": "fsdp2", "deepspeed": f"deepspeed-zero{d.zero_stage}"}[d.backend]
