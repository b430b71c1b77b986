"""The `distbench.run/1` record: one JSON object per line. `FIELDS` is the one table of its fields (path,
types, meaning); `SPEC`, the shape `validate(record)` checks for the writer, the tests and the loader, and
docs/record.md (`python -m distbench.results.schema --markdown`) are both made from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SCHEMA = "distbench.run/1"
STATUSES = ("ok", "failed", "diverged")
Number = (int, float)
Null = type(None)
SKIPPED_SHOWN = 20


@dataclass(frozen=True)
class Field:
    """One field of the record: its dotted path, the JSON types it may hold, what it means (units in the name),
    and whether it was `added` after records were first written (a record from before may lack it)."""

    path: str
    types: Any
    meaning: str
    added: bool = False


# The record, field by field: the one table that validation (SPEC) and docs/record.md are made from. Sections
# other than the top level may be null in a failed record. New fields are added, never renamed; a breaking
# change bumps the version.
FIELDS: tuple[Field, ...] = (
    Field("schema", str, "`distbench.run/1`"),
    Field("run_id", str, "the run's id: --run-id, a sweep line's id, or the start time and 8 random hex digits; "
          "one run, one id, across resumes"),
    Field("status", str, "`ok`, `failed` or `diverged` (a non-finite final loss)"),
    Field("error", (str, Null), "why the run failed or diverged, in one line (at most 2,000 characters, its start "
          "and end kept); null when ok"),
    Field("started_at", str, "ISO-8601, UTC, when the run first started (before any resume)"),
    Field("finished_at", str, "ISO-8601, UTC"),
    Field("config", dict, "the whole resolved config (`config.model.head`, `config.train.steps`, ...: docs/cli.md); "
          "output paths relative to the repository when inside it"),
    Field("env.torch", str, "torch version"),
    Field("env.torchvision", (str, Null), "torchvision version"),
    Field("env.deepspeed", (str, Null), "deepspeed version"),
    Field("env.cuda", (str, Null), "CUDA version; null on the CPU"),
    Field("env.nccl", (str, Null), "NCCL version; null without NCCL"),
    Field("env.device", str, "the GPU's name, or the CPU's"),
    Field("env.world_size", int, "ranks"),
    Field("env.backend", str, "the process group's backend (gloo or nccl); the engine is `config.dist.backend`"),
    Field("env.hostname", str, "rank 0's host"),
    Field("env.hosts", list, "every rank's host, sorted, each once: two entries for a two-node run", added=True),
    Field("env.git_sha", (str, Null), "the checkout's commit"),
    Field("env.python", str, "Python version"),
    Field("env.cpu_cores", int, "CPU cores rank 0 may run on (its affinity): ranks beyond them share cores",
          added=True),
    Field("params.total", int, "weights, learned or fixed (fixed weights held as buffers count: a fixed head's "
          "projection, a split conv's fixed filters)"),
    Field("params.trainable", int, "learned weights: what data parallelism must reduce"),
    Field("params.frozen", int, "total - trainable"),
    Field("params.head_total", int, "the head's weights"),
    Field("params.head_trainable", int, "the head's learned weights"),
    Field("params.conv_learned_fraction", Number, "learned share of the convs' weight elements"),
    Field("params.head_in_features", int, "N: the features the head maps to C logits", added=True),
    Field("comm.payload_bytes_per_step", Number, "bytes handed to the gradient reduction per optimizer step (the "
          "tensors given to each collective: a DDP bucket's, FSDP's reduce-scatter input, DeepSpeed's reduction; "
          "a sharded head's collectives too), mean over the timed steps"),
    Field("comm.expected_bytes_per_step", Number, "what the model says the payload must be "
          "(`distbench.comm.expected.step_traffic`); a test holds it equal to the payload"),
    Field("comm.bus_bytes_per_step", Number, "what each rank moves on the ring for the payload, each collective "
          "by nccl-tests' factor: all-reduce 2(n-1)/n, reduce-scatter (n-1)/n, all-gather (n-1) x its input"),
    Field("comm.buckets_per_step", Number, "gradient-reduction calls per step (DDP buckets)"),
    Field("comm.buckets", list, "one entry per payload call of the last timed step (a DDP bucket, an FSDP "
          "group, a DeepSpeed reduction): {op, bytes, dtype, params, first, last}, the parameters' count and the "
          "first and last of their names where known (null otherwise); the bytes sum to the step's payload",
          added=True),
    Field("comm.hook", str, "what reduced the gradients: the DDP comm hook (`allreduce`, `fp16`, ...), `fsdp2`, "
          "`deepspeed-zero2`, ..."),
    Field("comm.collectives", dict, "bytes per step by collective (`all_reduce`, `reduce_scatter`, "
          "`all_gather`, `reduce`, `broadcast`), payload or not"),
    Field("comm.logger_bytes_per_step", (int, float, Null), "DeepSpeed's comms logger's bytes per step under "
          "--validate-comm, else null"),
    Field("comm.replicas_identical", bool, "trainable weights bit-identical on every rank after the timed steps "
          "(else the run is failed)"),
    Field("comm.bucket_cap_mb", (int, float, Null), "the DDP bucket size really used; null where the engine has "
          "no DDP buckets (FSDP, DeepSpeed)"),
    Field("perf.samples_per_s", Number, "global: batch x world size x timed steps / their total time"),
    Field("perf.step_time_ms", dict, "`p50`, `p90`, `mean` of the timed steps"),
    Field("perf.exposed_comm_ms", (int, float, Null), "p50 step time minus p50 step time with gradient sync off "
          "(--nosync-steps); null where the engine cannot step without sync (FSDP, DeepSpeed); noise can make it "
          "negative"),
    Field("perf.exposed_comm_ms_direct", (int, float, Null), "exposed communication measured within the "
          "timed steps: per step, the wait of the rank that computed longest, median over steps", added=True),
    Field("perf.ranks", list, "per rank, p50 over the timed steps: {rank, compute_ms (step start to its last "
          "payload launch), wait_ms (from there until the backward and its collectives are done), optimizer_ms}; "
          "host clocks on the CPU, CUDA events on GPUs, with no synchronisation added to a step", added=True),
    Field("perf.profile", (dict, Null), "{dir, steps}: the run wrote per-rank torch.profiler traces of that many "
          "extra steps after the timed window (--profile-dir); null when not profiled", added=True),
    Field("perf.peak_memory_bytes", int, "max over ranks: CUDA allocator peak on GPU, peak RSS on CPU"),
    Field("perf.timed_steps", int, "steps in the timed window"),
    Field("perf.warmup_steps", int, "untimed steps first"),
    Field("perf.untimed_steps", int, "timed-window steps left out: the first (cold) step after each resume",
          added=True),
    Field("perf.resumed_from_steps", list, "the step each resume began at; [] for a run that ran through",
          added=True),
    Field("perf.continued_from", (str, Null), "the run id whose checkpoint this run went on from: the same "
          "training given other --steps (typically a longer run continuing a shorter one); null when it started "
          "from scratch", added=True),
    Field("perf.timed_window", str, "`continuous`, or `split` (its steps ran in more than one process)",
          added=True),
    Field("accuracy.top1", Number, "top-1 on the held-out samples (language models: next-token top-1 per "
          "held-out token)"),
    Field("accuracy.top5", Number, "top-5 on the held-out samples"),
    Field("accuracy.oracle_top1", (int, float, Null), "the Bayes-optimal top-1 on the same samples (synthetic "
          "data); null for real data"),
    Field("accuracy.eval_samples", int, "held-out samples evaluated, all ranks together (tokens, for a language "
          "model)"),
    Field("accuracy.eval_loss", (int, float, Null), "mean cross-entropy on the held-out samples (nats per token "
          "for a language model)", added=True),
    Field("accuracy.oracle_loss", (int, float, Null), "the Bayes-optimal cross-entropy on the same tokens "
          "(synthetic-text: its entropy rate, measured on them); null otherwise", added=True),
    Field("accuracy.perplexity", (int, float, Null), "exp(eval_loss), for a language model; null for images",
          added=True),
    Field("accuracy.final_loss", (int, float, Null), "the last timed step's training loss, mean over ranks; null "
          "when not finite"),
    Field("accuracy.curve", list, "the learning curve, one point per evaluation (--eval-every), the final one "
          "last: each {step, samples_per_class, top1, top5, eval_loss}", added=True),
    Field("accuracy.flat_at_step", (int, Null), "the step the run ended at, before its train.steps, because its "
          "learning curve was flat (--until-flat); null when it ran every step", added=True),
    Field("data.skipped_images", (int, Null), "unreadable images skipped (--skip-bad-images); null when not "
          "skipping", added=True),
    Field("data.skipped_files", list, f"the first {SKIPPED_SHOWN} of them, sorted", added=True),
)  # fmt: skip
SECTIONS = ("env", "params", "comm", "perf", "accuracy", "data")
NULLABLE_IN_FAILED = SECTIONS
ADDED = frozenset({f.path for f in FIELDS if f.added} | {"data"})  # the whole data section came later


def _spec(fields: tuple[Field, ...]) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    for f in fields:
        *sections, name = f.path.split(".")
        node = spec
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = f.types
    return spec


SPEC: dict[str, Any] = _spec(FIELDS)  # section -> {field: allowed types}, as check_fields reads it


class SchemaError(ValueError):
    pass


def check_fields(
    spec: dict[str, Any], obj: Any, where: str = "", nullable: tuple[str, ...] = (), optional=frozenset()
) -> None:
    """Raise SchemaError naming the first field of `obj` that does not fit `spec` ({field: type(s) or a
    nested spec}). Sections named in `nullable` may be null; dotted names in `optional` may be missing.
    bool is accepted only where spec names it."""
    if not isinstance(obj, dict):
        raise SchemaError(f"{where.rstrip('.') or 'record'} must be an object, got {type(obj).__name__}")
    for key, want in spec.items():
        name = f"{where}{key}"
        if key not in obj:
            if name in optional:
                continue
            raise SchemaError(f"missing field {name}")
        value = obj[key]
        if isinstance(want, dict):
            if not (value is None and key in nullable):
                check_fields(want, value, name + ".", optional=optional)
        elif not isinstance(value, want) or (isinstance(value, bool) and bool not in _tuple(want)):
            raise SchemaError(f"{name} has type {type(value).__name__}")


def validate(record: dict[str, Any], written_before: bool = False) -> None:
    """Raise SchemaError naming the first field that does not fit the schema. `written_before`: the record
    may come from before the fields in ADDED (reading committed results); a record about to be written
    must have them all."""
    nullable = NULLABLE_IN_FAILED if record.get("status") == "failed" else ()
    check_fields(SPEC, record, nullable=nullable, optional=ADDED if written_before else frozenset())
    if record["schema"] != SCHEMA:
        raise SchemaError(f"schema is {record['schema']!r}, expected {SCHEMA!r}")
    if record["status"] not in STATUSES:
        raise SchemaError(f"status {record['status']!r} not in {STATUSES}")
    if record["perf"] is not None:
        for q in ("p50", "p90", "mean"):
            if not isinstance(record["perf"]["step_time_ms"].get(q), Number):
                raise SchemaError(f"missing field perf.step_time_ms.{q}")


def _tuple(t: Any) -> tuple:
    return t if isinstance(t, tuple) else (t,)


def markdown() -> str:
    """docs/record.md: the record's fields, made from FIELDS (a test fails when the committed file is stale)."""
    lines = [
        "# The record (`distbench.run/1`)",
        "",
        "<!-- generated by `python -m distbench.results.schema --markdown > docs/record.md`; do not edit -->",
        "",
        "One JSON object per line, appended whole by rank 0 under an exclusive lock, so concurrent jobs never",
        "interleave and lines already written are never touched. Read records with",
        "`distbench.results.load(path_or_dir)`: a pandas DataFrame with dotted columns. In a `failed` record the",
        f"sections {', '.join(f'`{s}`' for s in SECTIONS)} may be null. New fields are added, never renamed; a",
        "breaking change bumps the version. Fields marked *added* came after the first records: older ones may",
        "lack them (`validate(record, written_before=True)` accepts that).",
        "",
        "| field | type | meaning |",
        "|---|---|---|",
    ]
    for f in FIELDS:
        kinds = f.types if isinstance(f.types, tuple) else (f.types,)
        names = " or ".join(dict.fromkeys("null" if t is Null else t.__name__ for t in kinds))
        lines.append(f"| `{f.path}` | {names} | {f.meaning}{' (*added*)' if f.added else ''} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m distbench.results.schema --markdown")
    sys.stdout.write(markdown())
