import math

import pandas as pd
import pytest
from conftest import ROOT

from distbench.results.analysis import learns_everything, load_runs, summary_table, to_markdown, with_baselines


def row(
    run_id,
    head="learned",
    freeze="none",
    classes=1000,
    payload=100,
    sps=10.0,
    top1=0.5,
    mode="split",
    batch=32,
    finished="2026-01-01T00:00:00",
):
    return {
        "run_id": run_id,
        "status": "ok",
        "finished_at": finished,
        "config.model.model": "resnet18",
        "config.model.head": head,
        "config.model.num_classes": classes,
        "config.model.param": "none",
        "config.freeze.freeze": freeze,
        "config.freeze.freeze_mode": mode,
        "config.train.batch_size": batch,
        "config.output.out": f"/somewhere/{run_id}.jsonl",
        "env.world_size": 2,
        "env.backend": "gloo",
        "comm.payload_bytes_per_step": payload,
        "perf.samples_per_s": sps,
        "accuracy.top1": top1,
        "params.trainable": payload // 4,
        "params.conv_learned_fraction": 1.0,
    }


def test_derived_columns_on_a_hand_made_frame():
    df = pd.DataFrame(
        [
            row("base", payload=1000, sps=10.0, top1=0.70),
            row("fixed", head="fixed", payload=200, sps=15.0, top1=0.68),
            row("frac", freeze="fraction:0.1", payload=400, sps=12.0, top1=0.60),
            row("mask", freeze="fraction:0.1", mode="mask", payload=1000, sps=9.0, top1=0.60),
            row("other-batch", head="fixed", batch=64, payload=200, sps=30.0),  # no baseline with batch 64
            row("base-100k", classes=100_000, payload=5000, sps=2.0, top1=0.1),
            row("fixed-100k", head="fixed", classes=100_000, payload=900, sps=6.0, top1=0.2),
            {**row("fixed-rule", head="fixed", payload=200, sps=14.0), "config.train.until_flat": 0.01},
            {**row("fixed-other-rule", head="fixed", payload=200, sps=14.0), "config.train.until_flat": 0.02},
            {**row("base-rule", payload=1000, finished="2025-12-31T00:00:00"), "config.train.until_flat": 0.01},
            {**row("broken"), "status": "failed"},
        ]
    )
    out = with_baselines(df).set_index("run_id")
    assert "broken" not in out.index
    assert out.loc["fixed", "baseline_run_id"] == "base"
    assert out.loc["fixed", "bytes_saved_frac"] == pytest.approx(0.8)
    assert out.loc["fixed", "speedup"] == pytest.approx(1.5)
    assert out.loc["fixed", "top1_delta"] == pytest.approx(-0.02)
    assert out.loc["mask", "bytes_saved_frac"] == 0 and out.loc["frac", "bytes_saved_frac"] == pytest.approx(0.6)
    assert out.loc["fixed-100k", "baseline_run_id"] == "base-100k"
    assert out.loc["fixed-100k", "speedup"] == pytest.approx(3.0)
    assert math.isnan(out.loc["other-batch", "speedup"])
    # A stop rule changes no step: a run is matched under its own rule where the study has it, else under another.
    assert out.loc["fixed-rule", "baseline_run_id"] == "base-rule"  # though "base" finished later
    assert out.loc["fixed-other-rule", "baseline_run_id"] == "base" and out.loc["fixed", "baseline_run_id"] == "base"
    assert out.loc["base", "bytes_saved_frac"] == 0 and out.loc["base", "speedup"] == 1
    assert out.loc["mask", "variant"] == "learned head, fraction:0.1 (mask)"
    md = to_markdown(summary_table(out.reset_index()))
    assert md.count("\n") == 10 + 1 and "| 0.800 |" in md


def test_every_setting_that_changes_a_step_is_in_the_label_and_the_baseline_match():
    """An FSDP, DeepSpeed, hook, precision or world-size run never reads as, nor is compared with, a DDP run:
    each fixed head is matched with the learned head of its own engine, hook, precision and world size."""
    settings = {
        "ddp": {},
        "fsdp": {"config.dist.backend": "fsdp"},
        "zero3": {"config.dist.backend": "deepspeed", "config.dist.zero_stage": 3},
        "fp16": {"config.dist.comm_hook": "fp16"},
        "powersgd": {"config.dist.comm_hook": "powersgd", "config.dist.powersgd_rank": 4},
        "bf16": {"config.train.precision": "bf16"},
        "8 ranks": {"env.world_size": 8},
    }
    rows = []
    for name, extra in settings.items():
        rows += [row(f"{name}/base", payload=1000) | extra, row(f"{name}/fixed", head="fixed", payload=10) | extra]
    out = with_baselines(pd.DataFrame(rows)).set_index("run_id")
    labels = out["variant"]
    assert labels.nunique() == len(labels), labels.to_dict()
    for name in settings:
        assert out.loc[f"{name}/fixed", "baseline_run_id"] == f"{name}/base"
    assert labels["fsdp/fixed"] == "fixed head, FSDP2, 2 ranks"
    assert labels["zero3/base"] == "learned head, DeepSpeed ZeRO-3, 2 ranks"
    assert labels["powersgd/fixed"] == "fixed head, PowerSGD rank 4, 2 ranks"
    assert labels["8 ranks/fixed"] == "fixed head, 8 ranks"
    # one world size in the frame: no rank count in the labels
    assert with_baselines(pd.DataFrame(rows[:4]))["variant"].tolist() == [
        "learned head", "fixed head", "learned head, FSDP2", "fixed head, FSDP2"
    ]  # fmt: skip


def test_a_figure_label_tells_runs_that_would_read_the_same_apart():
    """A study's longer lines read like its grid's runs but for their step count, a learning-rate check's but for
    the rate: a figure's label says what sets them apart, and only where it is needed."""
    from distbench.results.report import _label

    df = pd.DataFrame([row("a"), {**row("b"), "config.train.steps": 400}, row("c", classes=20)])
    df.loc[df["config.train.steps"].isna(), "config.train.steps"] = 100
    labels = _label(with_baselines(df)).tolist()
    assert labels == ["resnet18 C=1,000: learned head (steps 100)", "resnet18 C=1,000: learned head (steps 400)",
                      "resnet18 C=20: learned head"], labels  # fmt: skip
    rates = _label(with_baselines(pd.DataFrame([{**row("a"), "config.train.lr": lr} for lr in (3e-4, 1e-3)])))
    assert sorted(rates.str.extract(r"\((lr .*)\)$")[0]) == ["lr 0.0003", "lr 0.001"], rates.tolist()
    # A text setting, and two studies concatenated (their index repeats): each run's label its own.
    runs = pd.concat([pd.DataFrame([{**row("s"), "config.train.optimizer": "sgd"}]),
                      pd.DataFrame([{**row("w"), "config.train.optimizer": "adamw"}])])  # fmt: skip
    assert _label(with_baselines(runs).set_index(pd.Index([0, 0]))).str.rsplit(" (", n=1).str[1].tolist() == [
        "optimizer sgd)", "optimizer adamw)"
    ]  # fmt: skip


def test_fraction_one_is_no_freeze():
    assert learns_everything("none") and learns_everything("fraction:1.0") and not learns_everything("bn")
    assert not learns_everything("fraction:0.4")


def test_heads_table_reads_bytes_and_step_ratios_against_the_learned_head():
    extra = {"perf.exposed_comm_ms": 1.0}
    df = pd.DataFrame(
        [
            {**row("base", payload=1000), "perf.step_time_ms.p50": 300.0, **extra},
            {**row("fixed", head="fixed", payload=20), "perf.step_time_ms.p50": 100.0, **extra},
            {**row("fwht", head="fixed-fwht", payload=20), "perf.step_time_ms.p50": 75.0, **extra},
        ]
    )
    from distbench.results.analysis import heads_markdown

    md = heads_markdown(with_baselines(df))
    rows = md.splitlines()
    assert [r.split(" | ")[1] for r in rows[2:5]] == ["learned", "fixed", "fixed-fwht"]  # most bytes first
    assert "| 98.0% |" in rows[3] and "| 0.0% |" in rows[2]
    assert rows[-1].endswith("1,000 classes: 3.0x with fixed, 4.0x with fixed-fwht.")


def test_engine_table_is_generated_from_the_committed_records():
    """docs/engines.md's "What each engine sends" table is made by `distbench docs` from
    analysis/data/engines.jsonl, never typed: regenerate it after rerunning the study."""
    from distbench.results.analysis import load_runs
    from distbench.results.blocks import update_block
    from distbench.results.report import ENGINES_PAGE, ENGINES_RECORDS, engines_block

    assert not update_block(ENGINES_PAGE, "engines-table", engines_block(), check=True)
    df = load_runs(ENGINES_RECORDS)
    ok = df[df["status"] == "ok"]
    assert len(ok) == len(df) and len(df) >= 16  # every setup at both class counts ran
    assert (ok["comm.payload_bytes_per_step"] == ok["comm.expected_bytes_per_step"]).all()


def test_weight_structure_study_is_committed_learns_and_is_drawn():
    """Issue 17's runs (analysis/weight_structures.toml) sit in the committed Fashion-MNIST records: every
    line of the sweep ran, sent exactly what it should, learned far above chance (10%), and the accuracy
    figure draws each as a labelled point beside the committed lines."""
    from distbench.results import read_records
    from distbench.results.report import fig_accuracy
    from distbench.sweep import expand

    data = ROOT / "analysis" / "data"
    lines, _ = expand(ROOT / "analysis" / "weight_structures.toml")
    wanted = [line["run_id"] for line in lines]
    assert len(wanted) == 9
    records = {r["run_id"]: r for r in read_records(data / "fashion_mnist.jsonl") if r["status"] == "ok"}
    assert set(wanted) <= set(records), sorted(set(wanted) - set(records))
    for run_id in wanted:
        r = records[run_id]
        assert r["comm"]["payload_bytes_per_step"] == r["comm"]["expected_bytes_per_step"], run_id
        assert r["accuracy"]["top1"] > 0.5 and r["accuracy"]["eval_samples"] == 10_000, run_id
    fig = fig_accuracy(load_runs(data / "fashion_mnist.jsonl"))
    (ax,) = fig.axes
    labels = [t.get_text() for t in ax.texts]
    assert len(labels) == len(wanted)
    assert {"fraction:0.1 along in", "spatial-triangular", "wrn-16-1: channel-average"} <= set(labels)


def test_head_scaling_reads_the_price_of_fixing_from_records():
    """Learned and fixed runs at one body, N and C: the gap, the capacity ratio, and where each curve first
    reaches 90% of the learned head's top-1 (or does not)."""
    from test_results import record

    from distbench.results.analysis import head_scaling

    def run(run_id, head, init, top1s, every=8.0, classes=1024):
        curve = [{"step": 10 * i, "samples_per_class": every * i, "top1": t, "top5": t, "eval_loss": 1.0}
                 for i, t in enumerate(top1s, 1)]  # fmt: skip
        r = record(run_id=run_id, accuracy={**record()["accuracy"], "top1": top1s[-1], "curve": curve})
        r["config"] = {"model": {"model": "tiny", "num_classes": classes, "head": head, "head_scale_init": init}}
        r["params"] = {**r["params"], "total": 1_200_000, "head_total": 1_000, "head_in_features": 128}
        return r

    rows = [
        run("l", "learned", "authors", [0.5, 0.995, 1.0, 1.0]),  # flat: +0.005 from 16 to 32 per class
        run("a", "fixed-srht", "authors", [0.2, 0.6, 0.95]),
        run("r", "fixed-srht", "rule", [0.1, 0.3, 0.5]),
        run("short", "fixed-srht", "rule", [0.1, 0.5], every=6.0),  # budget 12 per class: learned had 0.5 at 8
        run("long", "fixed-srht", "rule", [0.5, 0.97], every=20.0),  # 40 per class: past the learned curve's end
        run("l-short", "learned", "authors", [0.4]),  # a shorter learned run: not the baseline
    ]
    df = pd.json_normalize(rows, sep=".")
    table = head_scaling(df).set_index("run_id")
    assert table.loc["l", "gap"] == 0 and table.loc["a", "gap"] == pytest.approx(5.0)
    assert table.loc["r", "gap"] == pytest.approx(50.0)
    assert table.loc["a", "capacity"] == pytest.approx(1024 * 128 / (1_200_000 - 1_000))
    assert table.loc["a", "c_over_n"] == 8
    assert table.loc["l", "spc_to_90"] == 16.0 and table.loc["a", "spc_to_90"] == 24.0
    assert math.isnan(table.loc["r", "spc_to_90"])  # never within 90% of the learned head: not within budget
    assert table.loc["a", "head_label"] == "fixed-srht, authors' alpha"
    assert table.loc["r", "head_label"] == "fixed-srht, alpha from the rule"
    assert not table.loc["a", "flat"] and table.loc["l", "flat"] and table.loc["a", "learned_flat"]
    # every run is held against the learned head at its own budget of samples per class
    assert table.loc["short", "learned_top1"] == 0.5 and table.loc["short", "gap"] == pytest.approx(0.0)
    assert table.loc["long", "learned_top1"] == 1.0 and table.loc["long", "gap"] == pytest.approx(3.0)
    assert table.loc["long", "spc_to_90"] == 40.0  # 90% of the learned head's final top-1
    assert set(table["learned_run"]) == {"l"}  # the longest learned run is every run's baseline
    assert table.loc["l-short", "gap"] == pytest.approx(10.0)  # 0.5 at its 8 per class, against its 0.4
    # the results page's table: the shortest fixed budget, the best longer line, where 90% is first reached
    from distbench.results.analysis import head_scaling_markdown

    row = head_scaling_markdown(head_scaling(df)).splitlines()[2]
    assert row == "| tiny | 128 | 1,024 | 8 | 0.109 | 100.0% (32) | 50.0% (12) | 97.0% (40) | 16 / 24 |", row

    # The figure's curves: at the largest C, the learned head's (solid) and the best longest fixed head's (dashed)
    from distbench.results.report import fig_price_of_fixing

    lines = fig_price_of_fixing(df).axes[2].get_lines()
    drawn = {(line.get_linestyle(), tuple(line.get_ydata())) for line in lines}
    assert drawn == {("--", (50.0, 97.0)), ("-", (50.0, 99.5, 100.0, 100.0))}
    # a larger C whose learned line has not run (yet): its fixed curve alone, and no error
    lone = run("lone", "fixed-srht", "rule", [0.01, 0.02], classes=4096)
    lines = fig_price_of_fixing(pd.json_normalize([*rows, lone], sep=".")).axes[2].get_lines()
    assert {(line.get_linestyle(), tuple(line.get_ydata())) for line in lines} == {("--", (1.0, 2.0))}


def test_longer_lm_lines_end_by_the_rule_their_tables_judge_them_by():
    """The language-model study's longer grids stop each line where the tables call it flat: their
    --until-flat is analysis.LM_FLAT, and every line writes into its study's own records."""
    from distbench.results.analysis import LM_FLAT
    from distbench.sweep import expand

    for grid, out in (("lm_heads_long", "lm_heads"), ("lm_corpus_long", "lm_corpus")):
        lines, _ = expand(ROOT / "analysis" / f"{grid}.toml")
        assert lines and {line["config"]["train"]["until_flat"] for line in lines} == {LM_FLAT}, grid
        assert {line["config"]["output"]["out"] for line in lines} == {str(ROOT / "analysis" / "data" / f"{out}.jsonl")}


def test_head_scaling_lines_end_by_the_rule_their_table_judges_them_by():
    """The head-scaling grids stop the learned line where the study's table calls it flat: every --until-flat
    they set is analysis.HEAD_SCALING_FLAT."""
    from distbench.results.analysis import HEAD_SCALING_FLAT
    from distbench.sweep import expand

    for grid in ("head_scaling", "head_scaling_100k"):
        lines, _ = expand(ROOT / "analysis" / f"{grid}.toml")
        rules = {line["config"]["train"]["until_flat"] for line in lines} - {0.0}
        assert rules == {HEAD_SCALING_FLAT}, grid
        assert {line["config"]["model"]["head"] for line in lines if line["config"]["train"]["until_flat"]} == {
            "learned"
        }, grid


def test_lm_lines_are_flat_by_the_language_model_tolerance():
    """A language-model line is flat by the --until-flat rule at LM_FLAT: 0.05 nats per doubling at V = 8K is flat
    at the image study's 0.01 but not here, and neither is a top-1 that moved 0.3 points; a record without a
    learning rate is held against the default rate's learned line; no runs, no rows."""
    from test_results import record

    from distbench.config import defaults
    from distbench.results.analysis import LM_FLAT, lm_heads, lm_heads_markdown
    from distbench.results.curves import flat, loss_fell

    def curve(points):
        return [{"samples_per_class": 32 * 2**i, "top1": t, "eval_loss": x} for i, (x, t) in enumerate(points)]

    points = [(3.0, 0.25), (2.6, 0.26), (2.55, 0.26)]
    slow = curve(points)  # fell 0.05 from 64 to 128 per entry
    assert flat(slow, 0.01, 8192) and not flat(slow, LM_FLAT, 8192)
    assert not flat(curve([(3.0, 0.25), (2.55, 0.26), (2.55, 0.263)]), LM_FLAT, 8192)  # top-1 +0.3 points
    assert flat(curve([(3.0, 0.25), (2.55, 0.26), (2.56, 0.26)]), LM_FLAT, 8192)  # rising: over-fitting
    assert not flat(None, LM_FLAT, 8192) and math.isnan(loss_fell([*slow[:2], {**slow[2], "eval_loss": None}]))

    def run(run_id, head, points, lr):
        accuracy = {**record()["accuracy"], "eval_loss": points[-1][0], "top1": points[-1][1],
                    "curve": curve(points), "perplexity": math.exp(points[-1][0])}  # fmt: skip
        r = record(run_id=run_id, accuracy=accuracy)
        r["config"] = {"model": {"model": "gpt-tiny", "num_classes": 8192, "head": head, "seq_len": 64},
                       "data": {"dataset": "synthetic-text"}, "train": {"lr": lr} if lr else {}}  # fmt: skip
        return r

    default = defaults()["train"]["lr"]
    df = pd.json_normalize([run("l", "learned", points, None), run("t", "tied", points, default)], sep=".")
    table = lm_heads(df).set_index("run_id")
    assert table.loc["t", "loss_vs_learned"] == 0 and not table["flat"].any()
    assert table.loc["t", "loss_fell"] == pytest.approx(0.05)
    assert lm_heads_markdown(lm_heads(df.iloc[0:0])) == "no language-model runs"


def test_lm_heads_reads_loss_against_the_oracle_and_the_learned_head():
    """Language-model runs at one vocabulary: loss above the entropy rate, loss against the learned head's at the
    same token budget (from its curve), bytes and tokens per second; real text has no oracle. The figure draws a
    loss and a top-1 line per head and a cost point per run."""
    from test_results import record

    from distbench.results.analysis import gap_moved, lm_heads, lm_heads_markdown
    from distbench.results.curves import loss_fell
    from distbench.results.report import fig_lm_heads, matched

    def run(run_id, head, losses, every=32.0, oracle=2.0, payload=4_000_000, init="authors", dataset="synthetic",
            top1=None, lr=1e-3):  # fmt: skip
        top1 = top1 or [0.1 * i for i in range(1, len(losses) + 1)]
        curve = [{"step": 10 * i, "samples_per_class": every * i, "top1": t, "top5": 0.2, "eval_loss": x}
                 for i, (x, t) in enumerate(zip(losses, top1, strict=True), 1)]  # fmt: skip
        accuracy = {**record()["accuracy"], "eval_loss": losses[-1], "top1": top1[-1], "curve": curve,
                    "oracle_loss": oracle, "oracle_top1": 0.3, "perplexity": math.exp(losses[-1])}  # fmt: skip
        r = record(run_id=run_id, accuracy=accuracy)
        model = {"model": "gpt-tiny", "num_classes": 8192, "head": head, "head_scale_init": init, "seq_len": 64}
        r["config"] = {"model": model, "data": {"dataset": f"{dataset}-text"}, "train": {"lr": lr}}
        r["comm"] = {**r["comm"], "payload_bytes_per_step": payload}
        r["perf"] = {**r["perf"], "samples_per_s": 100.0, "peak_memory_bytes": 2_000_000}
        return r

    rows = [
        run("l", "learned", [5.0, 2.51, 2.5, 2.49], top1=[0.1, 0.4, 0.4, 0.4]),  # flat: -0.02 nats since 64
        run("t", "tied", [6.0, 4.0, 3.1, 3.0], payload=2_000_000),
        run("f", "fixed-srht", [7.0, 6.0], init="rule", payload=2_100_000),  # a shorter run: 64 per entry
        run("c", "learned", [6.0, 5.0], oracle=None, dataset="real"),
    ]
    df = pd.json_normalize(rows, sep=".")
    table = lm_heads(df).set_index("run_id")
    assert table.loc["l", "excess_loss"] == pytest.approx(0.49) and table.loc["l", "loss_vs_learned"] == 0
    assert table.loc["t", "loss_vs_learned"] == pytest.approx(0.51)
    assert table.loc["f", "loss_vs_learned"] == pytest.approx(3.49)  # against the learned loss at 64, not at 128
    assert table.loc["f", "gap"] == pytest.approx(20.0)  # top-1 likewise: 40% at 64 per entry, not its 10% at 32
    assert table.loc["f", "head_label"] == "fixed-srht, alpha from the rule" and table.loc["t", "head_label"] == "tied"
    assert table.loc["l", "flat"] and not table.loc["t", "flat"]
    assert table.loc["t", "mb_per_step"] == 2.0 and table.loc["t", "tokens_per_s"] == 6400.0
    assert math.isnan(table.loc["c", "excess_loss"]) and table.loc["c", "loss_vs_learned"] == 0
    assert table.loc["l", "loss_fell"] == pytest.approx(0.02) and table.loc["t", "loss_fell"] == pytest.approx(1.0)
    assert table.loc["f", "loss_fell"] == 1.0 and not table.loc["f", "flat"]  # two points: a doubling, no plateau
    one, two = {"samples_per_class": 32, "eval_loss": 3.0}, {"samples_per_class": 48, "eval_loss": 2.0}
    assert math.isnan(loss_fell([one])) and math.isnan(loss_fell([one, two]))  # 48 is no doubling of 32
    md = lm_heads_markdown(lm_heads(df[df["config.data.dataset"] == "synthetic-text"])).splitlines()
    assert "| lr |" not in md[0]  # one rate: no column
    assert [r.split(" | ")[1] for r in md[2:]] == ["learned", "tied", "fixed-srht, alpha from the rule"]
    assert "above the entropy rate" in md[0] and md[2].endswith("| 0.490 | 0 | 40.0% | 0.020 |  | yes |")
    assert md[3].endswith("| +0.510 | 40.0% | 1.000 | -0.980 | no |") and "| 20.1 |" in md[3]  # perplexity e^3.0
    # Against the learned head: tied was 4.0 - 2.51 behind at 64 per entry, 0.51 at 128; fixed 2.0 at 32, 3.49 at 64.
    assert table.loc["t", "gap_moved"] == pytest.approx(-0.98) and table.loc["f", "gap_moved"] == pytest.approx(1.49)
    assert math.isnan(table.loc["l", "gap_moved"]) and math.isnan(gap_moved(rows[1]["accuracy"]["curve"], None))
    near = lm_heads(df[df["config.data.dataset"] == "synthetic-text"])
    near["loss_vs_learned"] = near["head_label"].map({"learned": 0.0, "tied": -0.0004}).fillna(0.51)
    assert [r.split(" | ")[-5] for r in lm_heads_markdown(near).splitlines()[2:]] == ["0", "+0.000", "+0.510"]
    real = lm_heads_markdown(lm_heads(df[df["config.data.dataset"] == "real-text"])).splitlines()
    assert "entropy" not in real[0] and real[2].startswith("| 8,192 | learned | 64 | 4.00 | 6,400 | 2 | 5.000 |")
    # A learning-rate check: each head is held against the learned head at its own rate, and the rate is a column.
    check = pd.json_normalize([*rows[:2], run("l3", "learned", [4.0, 2.2, 2.1, 2.0], lr=3e-3),
                               run("t3", "tied", [4.0, 2.5, 2.3, 2.2], lr=3e-3)], sep=".")  # fmt: skip
    rates = lm_heads(check).set_index("run_id")
    assert rates.loc["t", "loss_vs_learned"] == pytest.approx(0.51) and rates.loc[
        "t3", "loss_vs_learned"
    ] == pytest.approx(0.2)
    by_rate = lm_heads_markdown(lm_heads(check)).splitlines()
    assert by_rate[0].startswith("| V | lr | head |") and [r.split(" | ")[1:3] for r in by_rate[2:]] == [
        ["0.001", "learned"],
        ["0.001", "tied"],
        ["0.003", "learned"],
        ["0.003", "tied"],
    ]
    fig = fig_lm_heads(df[df["config.data.dataset"] == "synthetic-text"])
    loss_panel, cost_panel = fig.axes[0], fig.axes[1]
    assert len(loss_panel.lines) == 3 + 1  # learned, tied, fixed and the entropy rate
    assert len(cost_panel.lines) == 3 + 1  # a point per run and the zero line
    # Its cost column compares the heads where all have a line: at 512 per entry, not at the learned line's 2,176.
    heads = ["learned", "learned", "tied", "tied", "learned"]
    budgets = [512.0, 2176.0, 1728.0, 512.0, 64.0]
    lines = pd.DataFrame({"V": [8192] * 4 + [32768], "head_label": heads, "tokens_per_entry": budgets})
    lines["run_id"] = list("abcde")
    assert sorted(matched(lines)["run_id"]) == ["a", "d", "e"]
