"""Language models (issue 27): the GPT backbone, the tied head, token data with a known entropy rate and
nanoGPT's token files, the checks that keep image and token options apart, and real 2-rank jobs whose bytes
are what the model says."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHORT, flags, python_run, torchrun, torchrun_many

from distbench.comm.expected import step_traffic
from distbench.config import ConfigError, DataConfig, DataError, ModelConfig
from distbench.model import build_model
from distbench.model.backbones import build_backbone
from distbench.model.counts import param_counts, trainable
from distbench.runtime.checks import parse_and_check
from distbench.runtime.data import Shard, build_dataset
from distbench.runtime.data.text import MarkovText, token_dtype

CPU = torch.device("cpu")
V, T = 512, 16


def make_tokens(root: Path, vocab: int, n: int, seed: int = 0) -> Path:
    """A nanoGPT data folder: train.bin and val.bin of `n` random token ids each, in the dtype V needs."""
    rng = np.random.default_rng(seed)
    for name in ("train.bin", "val.bin"):
        rng.integers(0, vocab, n).astype(token_dtype(vocab)).tofile(root / name)
    return root


# --------------------------------------------------------------------------------------------- the chain
def test_synthetic_text_has_the_entropy_rate_and_oracle_it_reports():
    """Every token's successors are distinct and Zipf-weighted, so the chain's conditional entropy is H(p) and the
    best guess (successor 0) is right with probability p_0: measured on many samples, both agree."""
    chain = MarkovText(V, successors=8, zipf=1.2, seed=3, device=CPU)
    p = torch.arange(1, 9, dtype=torch.float64) ** -1.2
    p /= p.sum()
    assert chain.entropy == pytest.approx(float(-(p * p.log()).sum()))
    tokens, ranks = chain.sequences(2000, 8, torch.Generator().manual_seed(0))
    # successors of one token are distinct: rank k -> a different next token for every k
    t = torch.arange(V)
    nexts = torch.stack([(chain.start(t) + k * chain.stride) % V for k in range(8)], 1)
    assert all(len(set(row.tolist())) == 8 for row in nexts)
    # the generated next token is the ranked successor of the previous one
    assert torch.equal(tokens[:, 1:], nexts[tokens[:, :-1], ranks])
    freq = torch.bincount(ranks.reshape(-1), minlength=8).double() / ranks.numel()
    assert torch.allclose(freq, p, atol=0.01)
    assert float((ranks == 0).double().mean()) == pytest.approx(float(p[0]), abs=0.01)


def test_synthetic_text_batches_resume_exactly_and_held_out_tokens_are_fixed():
    cfg = DataConfig(dataset="synthetic-text", eval_samples=6)
    ds = build_dataset(cfg, V, (T,), 4, Shard(0, 1, CPU), seed=1)
    stream = ds.train()
    batches = [next(stream) for _ in range(3)]
    x, y = batches[0]
    assert x.shape == (4, T) and y.shape == (4 * T,) and x.dtype == torch.long
    assert torch.equal(x[:, 1:].reshape(-1), y.view(4, T)[:, :-1].reshape(-1))  # targets: the next tokens
    resumed = next(ds.train(start=2))  # step 2 without drawing steps 0 and 1
    assert torch.equal(resumed[0], batches[2][0]) and torch.equal(resumed[1], batches[2][1])
    held = list(ds.eval())
    assert sum(len(b[1]) for b in held) == ds.eval_size == 6 * T
    again = list(ds.eval())
    assert all(torch.equal(a[1], b[1]) for a, b in zip(held, again, strict=True))
    # the oracle's loss is the mean -log p of the very held-out tokens' successor ranks
    chain = MarkovText(V, 16, 1.0, 1, CPU)  # the data set's: seed 1; each rank read back from its two tokens
    x, y = torch.cat([b[0] for b in held]), torch.cat([b[1] for b in held]).view(-1, T)
    ranks = ((y - chain.starts[x]) * pow(chain.stride, -1, V)) % V
    assert int(ranks.max()) < 16
    assert ds.oracle_loss_sum() == pytest.approx(float(-chain.log_p[ranks].sum()))
    assert ds.oracle_hits() == int((ranks == 0).sum())


# ------------------------------------------------------------------------------------------- token files
def test_token_files_give_shifted_windows_and_refuse_bad_files_in_one_line(tmp_path):
    root = make_tokens(tmp_path, V, 200)
    cfg = DataConfig(dataset="tokens", data_dir=str(root), eval_samples=0)
    ds = build_dataset(cfg, V, (T,), 4, Shard(1, 2, CPU), seed=0)
    stream = ds.train()
    x, y = next(stream)
    assert x.shape == (4, T) and torch.equal(x[:, 1:], y.view(4, T)[:, :-1])
    third = [next(stream) for _ in range(2)][-1]
    assert all(torch.equal(a, b) for a, b in zip(next(ds.train(start=2)), third, strict=True))  # resume
    ids = torch.from_numpy(np.fromfile(root / "val.bin", dtype=np.uint16).astype(np.int64))
    (vx, _), *_ = list(ds.eval())
    assert torch.equal(vx[0], ids[T : 2 * T])  # rank 1 of 2 evaluates the second window
    assert ds.eval_size == (200 - 1) // T * T
    assert token_dtype(70_000) == np.uint32

    def refused(argv: list[str]) -> ConfigError:
        with pytest.raises(ConfigError) as e:
            parse_and_check(["--model", "gpt-tiny", "--dataset", "tokens", "--seq-len", str(T), *argv])
        assert "\n" not in str(e.value)
        return e.value

    assert refused(["--num-classes", str(V)]).field == "data.data_dir"  # no folder given
    assert "no val.bin" in str(refused(["--num-classes", str(V), "--data-dir", str(make_short(tmp_path))]))
    e = refused(["--num-classes", "100", "--data-dir", str(root)])  # ids up to 511 in a vocabulary of 100
    assert e.field == "model.num_classes" and "token id" in str(e)
    (tmp_path / "odd").mkdir()
    make_tokens(tmp_path / "odd", V, 50)
    with open(tmp_path / "odd" / "val.bin", "ab") as f:
        f.write(b"\x01")  # half an id
    assert "not whole uint16 token ids" in str(refused(["--num-classes", str(V), "--data-dir", str(tmp_path / "odd")]))
    assert "fewer than one sequence" in str(
        refused(["--num-classes", str(V), "--data-dir", str(root), "--seq-len", "500"])
    )


def make_short(tmp_path: Path) -> Path:
    (tmp_path / "short").mkdir()
    make_tokens(tmp_path / "short", V, 50)
    (tmp_path / "short" / "val.bin").unlink()
    return tmp_path / "short"


def test_a_token_id_past_the_vocabulary_later_in_the_file_is_a_data_error(tmp_path):
    root = make_tokens(tmp_path, V, 200)
    ids = np.fromfile(root / "train.bin", dtype=np.uint16)
    ids[:] = V + 1  # checked files start clean in practice; here every window is bad
    ids.tofile(root / "train.bin")
    ds = build_dataset(DataConfig(dataset="tokens", data_dir=str(root)), V, (T,), 2, Shard(0, 1, CPU), 0)
    with pytest.raises(DataError, match=r"train\.bin holds token id 513"):
        next(ds.train())


# ------------------------------------------------------------------------------------- model and heads
def test_gpt_is_causal_and_gives_a_feature_row_per_position():
    torch.manual_seed(0)
    model = build_model(ModelConfig(model="gpt-tiny", num_classes=V, seq_len=T, head="learned"))
    x = torch.randint(V, (2, T))
    logits = model(x)
    assert logits.shape == (2 * T, V)
    later = x.clone()
    later[:, 10:] = (later[:, 10:] + 1) % V  # change the future
    same = model(later).view(2, T, V)
    assert torch.allclose(same[:, :10], logits.view(2, T, V)[:, :10], atol=1e-6)
    assert not torch.allclose(same[:, 10:], logits.view(2, T, V)[:, 10:])


def test_a_tied_head_is_the_embedding_trained_and_sent_once():
    """GPT-2's tying: one parameter, used at the input and the output, its gradient summed over both uses and
    sent once: the model sends V x N fewer floats than with an untied (learned) head."""
    torch.manual_seed(0)
    tied = build_model(ModelConfig(model="gpt-tiny", num_classes=V, seq_len=T, head="tied", head_bias=False))
    assert tied.head.embedding.weight is tied.backbone.wte.weight
    names = [n for n, _ in tied.named_parameters()]
    assert "head.embedding.weight" not in names and "backbone.wte.weight" in names  # listed once
    x = torch.randint(V, (2, T))
    torch.nn.functional.cross_entropy(tied(x), x.reshape(-1)).backward()
    grad = tied.backbone.wte.weight.grad
    assert grad is not None and int((grad.abs().sum(1) > 0).sum()) > len(
        x.unique()
    )  # every output row, not only inputs
    untied = build_model(ModelConfig(model="gpt-tiny", num_classes=V, seq_len=T, head="learned", head_bias=False))
    sent = {m: step_traffic(model, "ddp", 2, 4).payload_bytes for m, model in (("tied", tied), ("learned", untied))}
    assert sent["learned"] - sent["tied"] == 4 * V * 64
    assert sent["tied"] == 4 * sum(p.numel() for p in trainable(tied))
    counts = param_counts(tied)
    assert counts["head_total"] == 0 and counts["total"] == param_counts(untied)["total"] - V * 64  # counted once
    assert len([k for k in tied.state_dict() if k.endswith("wte.weight")]) == 1  # one key in the backbone


def test_gpt_tiny_takes_any_width_with_heads_that_divide_it():
    for width in (64, 100, 96, 33):
        backbone = build_backbone("gpt-tiny", vocab_size=V, width=width, seq_len=T)
        assert backbone(torch.zeros(2, T, dtype=torch.long)).shape == (2 * T, width)


def test_freeze_rules_for_language_models_fix_the_embedding_or_learn_only_the_norms():
    """`embedding`: everything but the token embedding is learned (random, or zero), so a step sends V x N less;
    `bn` learns a language model's LayerNorms alone. A tied head shares the embedding, so it is fixed with it."""
    from distbench.config import FreezeConfig

    def build(rule: str, head: str = "learned", init: str = "random"):
        torch.manual_seed(0)
        return build_model(ModelConfig(model="gpt-tiny", num_classes=V, seq_len=T, head=head),
                           FreezeConfig(freeze=rule, frozen_init=init))  # fmt: skip

    full, fixed = build("none"), build("embedding")
    learned = {n for n, p in fixed.named_parameters() if p.requires_grad}
    assert "backbone.wte.weight" not in learned and "backbone.wpe.weight" in learned and "head.weight" in learned
    assert step_traffic(full, "ddp", 2, 4).payload_bytes - step_traffic(fixed, "ddp", 2, 4).payload_bytes == 4 * V * 64
    assert float(build("embedding", init="zero").backbone.wte.weight.abs().sum()) == 0
    assert torch.equal(fixed.backbone.wte.weight, full.backbone.wte.weight)  # random: as initialised
    norms = {n for n, p in build("bn").named_parameters() if p.requires_grad}
    assert norms and all(".ln_" in n or "ln_f" in n or n.startswith("head.") for n in norms)
    tied = build("embedding", head="tied")
    assert not tied.head.embedding.weight.requires_grad  # a fixed random output layer, as Hoffer et al. tried
    with pytest.raises(ConfigError, match="token embedding"):
        parse_and_check(["--freeze", "embedding"])


@pytest.mark.parametrize(
    ("argv", "field", "words"),
    [
        (["--model", "gpt-tiny"], "data.dataset", "reads token ids"),
        (["--dataset", "synthetic-text"], "data.dataset", "token data"),
        (["--head", "tied"], "model.head", "token embedding"),
        (["--seq-len", "64"], "model.seq_len", "language models"),
        (["--model", "gpt-tiny", "--dataset", "synthetic-text", "--image-size", "16"], "model.image_size", "image"),
        (["--model", "gpt-tiny", "--dataset", "synthetic-text", "--seq-len", "0"], "model.seq_len", ">= 1"),
        (["--model", "gpt-tiny", "--dataset", "synthetic-text", "--num-classes", "8"], "data.successors", "only 8"),
        (["--model", "gpt-tiny", "--dataset", "synthetic-text", "--head", "tied", "--freeze", "embedding",
          "--frozen-init", "zero"], "freeze.frozen_init", "every logit 0"),
    ],
)  # fmt: skip
def test_image_and_token_options_stay_apart(argv, field, words):
    with pytest.raises(ConfigError) as e:
        parse_and_check(argv)
    assert e.value.field == field and words in str(e.value)


# ------------------------------------------------------------------------------------------- real jobs
def test_language_model_runs_send_what_the_model_says_on_two_ranks(tmp_path):
    """gpt-tiny at V = 32,768 under 2 gloo ranks: every head sends exactly its trainable parameters; tied and
    fixed-srht send less than learned; the record carries the oracle loss and perplexity. The token files run
    through the same job."""
    lm = ["--model", "gpt-tiny", "--num-classes", "32768", "--seq-len", "16", "--no-head-bias",
          *flags(**{**SHORT, "batch_size": 2, "eval_samples": 4})]  # fmt: skip
    heads = ["learned", "tied", "fixed-srht", "sharded"]
    files = make_tokens(tmp_path, 32768, 300)
    configs = [[*lm, "--dataset", "synthetic-text", "--head", h] for h in heads]
    configs.append([*lm, "--dataset", "tokens", "--data-dir", str(files), "--head", "tied"])
    fsdp = ("learned", "fixed-srht", "tied")
    configs += [[*lm, "--dataset", "synthetic-text", "--backend", "fsdp", "--head", h] for h in fsdp]
    configs.append([*lm, "--dataset", "synthetic-text", "--head", "learned", "--freeze", "embedding",
                    "--eval-every", "0.001"])  # fmt: skip
    hooks = ["fp16", "bf16", "powersgd"]  # every DDP comm hook: what each sends is counted as it is sent
    # PowerSGD compresses from its second iteration: every timed step after a warm-up of two
    configs += [[*lm, "--dataset", "synthetic-text", "--head", "tied", "--comm-hook", h,
                 *(["--warmup-steps", "2"] if h == "powersgd" else [])] for h in hooks]  # fmt: skip
    big = {v: [*lm[:2], "--num-classes", str(v), *lm[4:]] for v in (131072, 262144)}  # Llama 3's, Gemma's sizes
    configs += [[*big[v], "--dataset", "synthetic-text", "--head", h] for v in big for h in ("learned", "tied")]
    records = torchrun_many(configs, tmp_path / "runs.jsonl")
    sent = {}
    names = [*heads, "tokens", "fsdp learned", "fsdp fixed-srht", "fsdp tied", "fixed embedding", *hooks,
             *(f"{h} {v}" for v in big for h in ("learned", "tied"))]  # fmt: skip
    for rec, head in zip(records, names, strict=True):
        c, a = rec["comm"], rec["accuracy"]
        assert rec["status"] == "ok" and c["payload_bytes_per_step"] == c["expected_bytes_per_step"] > 0
        assert a["eval_samples"] == 4 * 16 and a["perplexity"] == pytest.approx(math.exp(a["eval_loss"]))
        sent[head] = c["payload_bytes_per_step"]
        if head == "tokens":
            assert a["oracle_loss"] is None and a["oracle_top1"] is None  # real token files: no oracle
        else:
            assert a["oracle_loss"] > 0 and 0 < a["oracle_top1"] < 1
    assert sent["learned"] - sent["tied"] == 4 * 32768 * 64  # the untied V x N
    assert sent["fixed-srht"] < sent["learned"]
    assert sent["sharded"] < sent["learned"]  # activations of B x T rows, not the V x N gradient
    assert sent["tokens"] == sent["tied"]
    assert sent["learned"] - sent["fixed embedding"] == 4 * 32768 * 64  # the input embedding's V x N
    assert sent["fp16"] == sent["bf16"] == sent["tied"] // 2 and sent["powersgd"] < sent["fp16"]
    for v in big:
        assert sent[f"learned {v}"] - sent[f"tied {v}"] == 4 * v * 64
    # a curve point per step: 2 ranks x 2 sequences x 16 positions = 64 target tokens over 32,768 entries
    curve = records[names.index("fixed embedding")]["accuracy"]["curve"]
    assert [p["samples_per_class"] for p in curve] == pytest.approx([64 / 32768 * (i + 1) for i in range(len(curve))])
    # FSDP2 saves the same V x N; its shards are padded to the ranks (a few bytes per tensor)
    assert abs((sent["fsdp learned"] - sent["fsdp fixed-srht"]) - (sent["learned"] - sent["fixed-srht"])) <= 64
    # ... and a tied head the same V x N: its embedding stays in the root group, reduced once
    assert abs((sent["fsdp learned"] - sent["fsdp tied"]) - (sent["learned"] - sent["tied"])) <= 64


# The default tier: stage 1 (which tests/test_deepspeed.py leaves to the slow tier) and the tied head at stage 3,
# where the embedding it shares is partitioned; the other stages are the image tests' paths again.
@pytest.mark.parametrize(
    ("stage", "head"),
    [
        pytest.param(0, "learned", marks=pytest.mark.slow),
        (1, "fixed-srht"),
        pytest.param(2, "learned", marks=pytest.mark.slow),
        pytest.param(3, "fixed-srht", marks=pytest.mark.slow),
        (3, "tied"),
    ],
)
def test_deepspeed_zero_stages_send_what_the_model_says_for_a_language_model(tmp_path, stage, head):
    pytest.importorskip("deepspeed")
    args = ["--model", "gpt-tiny", "--dataset", "synthetic-text", "--num-classes", "32768", "--seq-len", "16",
            "--head", head, "--backend", "deepspeed", "--zero-stage", str(stage), "--validate-comm",
            *flags(**{**SHORT, "batch_size": 2, "eval_samples": 4})]  # fmt: skip
    r = torchrun(args, tmp_path / "runs.jsonl")
    assert r.returncode == 0, r.stderr[-3000:]
    (rec,) = r.records
    assert rec["comm"]["payload_bytes_per_step"] == rec["comm"]["expected_bytes_per_step"] > 0
    assert rec["accuracy"]["oracle_loss"] > 0


def test_dry_run_counts_a_gpt2_small_with_a_128k_vocabulary(tmp_path):
    r = python_run(["--dry-run", "--model", "gpt2-small", "--dataset", "synthetic-text", "--num-classes", "131072",
                    "--head", "fixed-srht"], tmp_path / "runs.jsonl", timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "gpt2-small + fixed-srht head, 131,072 classes" in r.stdout
    assert "params.head_in_features                 768" in r.stdout


# ------------------------------------------------------------------------------------------- real corpus
def test_corpus_splits_by_file_and_round_trips_through_its_vocabulary(tmp_path):
    """`distbench corpus` on a folder of .py files: a BPE vocabulary trained on the training files, every file in
    exactly one split, ids below the vocabulary, each held-out file decoding back to its text, and token files
    the `tokens` data set takes as they are."""
    pytest.importorskip("tokenizers")
    import json

    from tokenizers import Tokenizer

    from distbench.runtime.data.corpus import held_out, main, source_files

    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "site-packages").mkdir()
    (src / "site-packages" / "installed.py").write_text("not = 'part of the library'\n")
    i = 0
    while i < 8 or not any(held_out(p.relative_to(src).as_posix()) for p in source_files(src)):
        (src / "pkg" / f"mod{i}.py").write_text(f"def f{i}(x):\n    return x * {i} + {i * i}  # ünïcode {i}\n" * 5)
        i += 1
    out = tmp_path / "corpus"
    assert main(["--vocab", "300", "--out", str(out), "--source", str(src)]) == 0
    meta = json.loads((out / "meta.json").read_text())
    files = source_files(src)
    assert meta["train"]["files"] + meta["val"]["files"] == len(files) == i  # site-packages left out
    assert meta["val"]["files"] == sum(held_out(p.relative_to(src).as_posix()) for p in files) >= 1
    vocab, eot = meta["vocab_size"], meta["eot"]
    assert 257 <= vocab <= 300
    val = np.fromfile(out / "val.bin", dtype=token_dtype(vocab)).astype(np.int64)
    assert val.size == meta["val"]["tokens"] and int(val.max()) < vocab and val[-1] == eot
    first = next(p for p in files if held_out(p.relative_to(src).as_posix()))
    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tokenizer.decode(val[: list(val).index(eot)].tolist()) == first.read_text()
    parse_and_check(["--model", "gpt-tiny", "--dataset", "tokens", "--data-dir", str(out), "--num-classes",
                     str(vocab), "--seq-len", "8", "--out", str(out / "r.jsonl")])  # fmt: skip
    with pytest.raises(SystemExit):
        main(["--vocab", "100", "--out", str(out), "--source", str(src)])  # below 256 bytes + end-of-text
