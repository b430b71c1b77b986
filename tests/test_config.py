import dataclasses

import pytest

from distbench.config import ConfigError, RunConfig, build_parser, parse_args
from distbench.runtime.checks import parse_and_check


def test_defaults_are_the_cpu_minute_run():
    cfg = parse_args([])
    assert cfg == RunConfig()
    assert (cfg.model.model, cfg.model.head, cfg.data.dataset, cfg.dist.backend) == (
        "tiny",
        "learned",
        "synthetic",
        "ddp",
    )


def test_flags_override_and_config_is_frozen():
    cfg = parse_args(["--head", "fixed", "--num-classes", "1000", "--no-head-bias", "--lr", "0.1"])
    assert (cfg.model.head, cfg.model.num_classes, cfg.model.head_bias, cfg.train.lr) == ("fixed", 1000, False, 0.1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.head = "learned"


def test_toml_then_flags(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[model]\nhead = "fixed"\nnum_classes = 50\n[train]\nsteps = 7\nlr = 1\n')
    cfg = parse_args(["--config", str(f), "--steps", "9"])
    assert (cfg.model.head, cfg.model.num_classes, cfg.train.steps, cfg.train.lr) == ("fixed", 50, 9, 1.0)


@pytest.mark.parametrize(
    "argv,field,text",
    [
        (["--num-classes", "1"], "model.num_classes", "must be >= 2"),
        (["--batch-size", "0"], "train.batch_size", "must be > 0"),
        (["--steps", "-3"], "train.steps", "must be > 0"),
        (["--model", "resnet19"], "model.model", "unknown model 'resnet19'"),
        (["--head", "fxied"], "model.head", "choose from: fixed, fixed-fwht, fixed-orthogonal, fixed-srht, learned"),
        (["--dataset", "mnist"], "data.dataset", "choose from: digits, fashion-mnist, imagefolder, synthetic"),
        (["--dataset", "imagefolder", "--data-dir", "/no/such/dir"], "data.data_dir", "no such directory"),
        (["--dataset", "digits"], "model.num_classes", "digits has 10 classes"),
        (["--model", "wrn-27-10"], "model.model", "6n \\+ 4"),
        (["--optimizer", "lamb"], "train.optimizer", "choose from: adamw, sgd"),
        (["--warmup-steps", "0"], "train.warmup_steps", "iteration 0 is never timed"),
        (["--head-scale", "2"], "model.head_scale", "take it: fixed, fixed-fwht, fixed-orthogonal, fixed-srht$"),
        (["--head", "fixed", "--head-scale", "0"], "model.head_scale", "finite non-zero"),
        (["--head", "fixed", "--head-scale", "nan"], "model.head_scale", "finite non-zero"),
        (["--head", "fixed", "--head-rows", "unit"], "model.head_rows", "the heads that take it: fixed-orthogonal$"),
        (["--head", "learned", "--head-scale-init", "rule"], "model.head_scale_init", "take it: fixed, fixed-fwht"),
        (["--head", "fixed-orthogonal", "--head-rows", "long"], "model.head_rows", "choose from: authors, unit"),
        (["--code-dim", "193"], "data.code_dim", "must be in 1..192"),
        (["--code-dim", "0"], "data.code_dim", "must be in 1..192"),
        (["--until-flat", "0.01"], "train.until_flat", "set --eval-every too"),
        (["--eval-every", "4", "--until-flat", "1"], "train.until_flat", "must be a fraction in \\[0, 1\\)"),
    ],
)
def test_bad_values_name_their_field(argv, field, text):
    with pytest.raises(ConfigError, match=text) as e:
        parse_and_check(argv)
    assert e.value.field == field
    assert str(e.value).startswith("--" + field.split(".")[1].replace("_", "-"))


def test_unknown_toml_key(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[train]\nstepz = 3\n")
    with pytest.raises(ConfigError, match="unknown key") as e:
        parse_and_check(["--config", str(f)])
    assert e.value.field == "train.stepz"


def test_cli_reference_names_every_flag_the_parser_takes():
    """docs/cli.md (generated from the config) names every flag the parser takes, and no other, each with a
    help text; tests/test_docs.py holds the committed file equal to what the code generates."""
    import re

    from distbench.config import markdown

    documented = set(re.findall(r"^\| `(--[a-z0-9-]+)`", markdown(), flags=re.M))
    parser = build_parser()
    taken = {o for a in parser._actions for o in a.option_strings if a.help not in (None, "==SUPPRESS==")}
    taken -= {"-h", "--help", "--config"}

    def plain(flags):  # --no-head-bias and --head-bias are one boolean flag
        return {f.replace("--no-", "--") for f in flags}

    assert plain(documented) == plain(taken)
    assert all(a.help for a in parser._actions if a.option_strings)


def test_config_is_a_leaf():
    """Importing the config loads no other distbench module (nor torch): anything may import it."""
    import subprocess
    import sys

    code = "import sys, distbench.config; print(sorted(m for m in sys.modules if m.startswith(('distbench', 'torch'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['distbench', 'distbench.config']"


def test_name_checks_are_one_explicit_step():
    from distbench.runtime.checks import check

    cfg = parse_args(["--head", "fxied", "--freeze", "bogus:1"])  # values alone: fine
    with pytest.raises(ConfigError) as e:
        check(cfg)
    assert e.value.field == "model.head"


def test_head_scale_takes_a_number_or_rule_from_flags_and_toml(tmp_path):
    from distbench.config import from_dict

    assert parse_args(["--head", "fixed-srht", "--head-scale", "rule"]).model.head_scale == "rule"
    assert parse_args(["--head", "fixed-srht", "--head-scale", "2.5"]).model.head_scale == 2.5
    assert from_dict({"model": {"head": "fixed", "head_scale": 3}}).model.head_scale == 3.0
    assert from_dict({"model": {"head": "fixed", "head_scale": "rule"}}).model.head_scale == "rule"
    with pytest.raises(ConfigError, match="must be a number or rule, got 'huge'") as e:
        from_dict({"model": {"head": "fixed", "head_scale": "huge"}})
    assert e.value.field == "model.head_scale"
    with pytest.raises(SystemExit):
        parse_args(["--head", "fixed", "--head-scale", "huge"])


@pytest.mark.parametrize(
    "args,message",
    [
        (["--head", "fixed", "--head-scale-init", "tiny"], "choose from: authors, rule"),
        (["--head", "fixed", "--head-scale-init", "rule", "--head-scale", "2"], "does not start anywhere"),
    ],
)
def test_head_scale_init_is_checked(args, message):
    with pytest.raises(ConfigError, match=message) as e:
        parse_args(args)
    assert e.value.field == "model.head_scale_init"


def test_added_fields_at_their_default_keep_sweep_ids():
    """A line's id hashes its config; options added later, left at their default, must not rename it."""
    from distbench.config import RunConfig, added_at_default

    config = RunConfig().to_dict()
    trimmed = added_at_default(config)
    assert "skip_bad_images" not in trimmed["data"] and "width" not in trimmed["model"]
    assert "eval_every" not in trimmed["train"] and "head_scale_init" not in trimmed["model"]
    assert trimmed["model"]["head"] == "learned"  # a field that was always there stays
    changed = RunConfig(model=type(RunConfig().model)(width=64)).to_dict()
    assert added_at_default(changed)["model"]["width"] == 64


def test_a_stop_rule_is_no_part_of_a_runs_identity():
    """--until-flat says where a run's record is read, not what it trains: a sweep line keeps its id when a
    grid adds it, and a checkpoint taken without it resumes with it (tests/test_resume.py runs that)."""
    from distbench.config import TrainConfig, trajectory
    from distbench.sweep import run_id_for

    plain = RunConfig(train=TrainConfig(eval_every=4)).to_dict()
    ruled = RunConfig(train=TrainConfig(eval_every=4, until_flat=0.01)).to_dict()
    assert trajectory(plain) == trajectory(ruled) and "until_flat" not in trajectory(ruled)["train"]
    assert run_id_for(plain, {}) == run_id_for(ruled, {})
    longer = RunConfig(train=TrainConfig(eval_every=4, steps=400)).to_dict()
    assert run_id_for(longer, {}) != run_id_for(plain, {})  # the cap on steps still is


def test_misspelt_toml_table_and_key_get_a_did_you_mean(tmp_path):
    table, key = tmp_path / "table.toml", tmp_path / "key.toml"
    table.write_text('[modle]\nhead = "fixed"\n')
    key.write_text('[model]\nhaed = "fixed"\n')
    with pytest.raises(ConfigError, match=r"unknown table \[modle\] \(did you mean \[model\]\?\)") as e:
        parse_and_check(["--config", str(table)])
    assert e.value.flag == "--config"  # not --modle: the table is no flag
    with pytest.raises(ConfigError, match=r"\(did you mean head\?\)") as e:
        parse_and_check(["--config", str(key)])
    assert e.value.field == "model.haed"
