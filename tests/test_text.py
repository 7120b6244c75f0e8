"""Text models: padding never counts, exact log p(x) on a tiny vocabulary, data errors, the CLI path."""

import gzip
import json
import math
from pathlib import Path

import pytest
import torch
from pyro import poutine

import pyrovae
from pyrovae.cli import main
from pyrovae.data import DataError
from pyrovae.models.text import BagOfWordsVAE, SentenceMultinomial, TextLM, TextVAE, bag_of_words, text_scores
from pyrovae.text import (
    EOS,
    PAD,
    TextData,
    Vocabulary,
    bucket_minibatches,
    check_tokens,
    from_sentences,
    load_text,
    pad_sentences,
)

TINY = ["a b", "b", "a a b a", "b b b", "a"]  # two words: V = 3 specials + 2 = 5, 3 tokens scored


def _ptb_dir():
    for c in (pyrovae.data.os.environ.get("PYROVAE_DATA"), Path(__file__).parents[2] / "shared" / "data"):
        if c and (Path(c) / "PTB" / "ptb.train.txt.gz").exists():
            return Path(c)
    pytest.skip("Penn Treebank not available (set PYROVAE_DATA)")


def _tiny(latent_dim=1, **kw):
    data = from_sentences(TINY)
    model = TextVAE(len(data.vocab), latent_dim, (8,), 6, **kw) if latent_dim else TextLM(len(data.vocab), (8,), 6)
    model.prepare_data(data)
    return data, model


def _log_px_given_z(model, x, z):
    """log p(x_i | z_i) per row, from the model's own observed site."""
    tr = poutine.trace(poutine.condition(model.model, data={"z": z})).get_trace(x)
    site = tr.nodes["x"]
    return site["fn"].log_prob(site["value"])


def _all_sentences(num_words, max_len):
    """Every sentence of 0..max_len-1 words over word ids 3..3+num_words-1, as (ids with <eos>)."""
    out = [[]]
    frontier = [[]]
    for _ in range(max_len - 1):
        frontier = [s + [w] for s in frontier for w in range(3, 3 + num_words)]
        out += frontier
    return [s + [EOS] for s in out], frontier


# ---------------------------------------------------------------- data


def test_vocabulary_encodes_and_decodes():
    data = from_sentences(TINY)
    assert data.vocab.words == ("<pad>", "<bos>", "<eos>", "b", "a")  # by count: b 6, a 5
    assert data.tokens[2].tolist() == [4, 4, 3, 4, EOS]
    assert data.lengths.tolist() == [3, 2, 5, 4, 2] and data.num_tokens == 16
    assert data.sentences() == TINY
    with pytest.raises(DataError, match="outside the vocabulary"):
        data.vocab.encode("a c")
    with pytest.raises(DataError, match="reserved"):
        Vocabulary.from_sentences([["<eos>"]])


def test_check_tokens_names_the_fix():
    x = pad_sentences([[3, 4, EOS], [4, EOS]])
    check_tokens(x, 5)
    with pytest.raises(DataError, match="int64"):
        check_tokens(x.float(), 5)
    with pytest.raises(DataError, match=r"0\.\.4"):
        check_tokens(x + 2, 5)
    bad = x.clone()
    bad[1, 1] = 3  # no <eos>
    with pytest.raises(DataError, match=r"rows \[1\]"):
        check_tokens(bad, 5)
    gap = torch.tensor([[3, PAD, 4, EOS]])  # padding inside a sentence
    with pytest.raises(DataError, match="not sentences"):
        check_tokens(gap, 5)


def test_buckets_hold_every_sentence_once_and_are_trimmed():
    lengths = torch.randint(1, 30, (203,), generator=torch.Generator().manual_seed(0))
    x = pad_sentences([[3] * (n - 1) + [EOS] for n in lengths.tolist()], 40)
    seen = []
    for (b,) in bucket_minibatches((x,), 16, torch.Generator().manual_seed(1)):
        n = (b != PAD).sum(1)
        assert b.shape[1] == n.max() and n.max() - n.min() <= 3  # ~7 per length: a batch spans 3
        seen += n.tolist()
    assert sorted(seen) == sorted(lengths.tolist())


def test_missing_and_corrupt_ptb_give_the_fix(tmp_path):
    with pytest.raises(DataError, match="PTB/ptb.train.txt"):
        load_text("ptb", "train", tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_text("ptb", "train", tmp_path / "nowhere")
    (tmp_path / "PTB").mkdir()
    with gzip.open(tmp_path / "PTB" / "ptb.train.txt.gz", "wt") as f:
        f.write(" a b \n")
    with pytest.raises(DataError, match="MD5"):
        load_text("ptb", "train", tmp_path)
    assert main(["train", "--dataset", "ptb", "--model", "text-vae", "--data-dir", str(tmp_path / "nowhere"),
                 "--out", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()


def test_ptb_counts():
    root = _ptb_dir()
    train, test = load_text("ptb", "train", root), load_text("ptb", "test", root)
    assert len(train) == 42068 and train.num_tokens == 929589  # SOURCES.md: tokens + eos
    assert len(test) == 3761 and test.num_tokens == 82430
    assert len(train.vocab) == 10002 and train.vocab.unk is not None  # 9,999 word types + 3 specials


# ---------------------------------------------------------------- padding contributes nothing


def test_padding_contributes_nothing_to_log_px():
    data, model = _tiny(latent_dim=2)
    x = data.tokens  # padded to the longest sentence (5)
    x2 = pad_sentences(x.tolist(), 2 * x.shape[1])  # every sentence padded twice as long
    x2 = torch.where(x2 == PAD, PAD, x2)
    z = torch.randn(len(x), 2)
    # the model's log p(x | z), row by row, alone or in a batch, padded once or twice
    alone = torch.stack([_log_px_given_z(model, x[i : i + 1, : data.lengths[i]], z[i : i + 1])[0]
                         for i in range(len(x))])
    assert torch.allclose(_log_px_given_z(model, x, z), alone, atol=1e-5)
    assert torch.allclose(_log_px_given_z(model, x2, z), alone, atol=1e-5)
    # the guide reads up to <eos> only
    loc, scale = model.encode(x)
    loc2, scale2 = model.encode(x2)
    assert torch.allclose(loc, loc2, atol=1e-6) and torch.allclose(scale, scale2, atol=1e-6)
    # importance sampling: the same draws give the same estimates, padded once or twice
    torch.manual_seed(3)
    once = pyrovae.log_marginal_likelihood(model.model, model.guide, x, num_samples=20)
    torch.manual_seed(3)
    twice = pyrovae.log_marginal_likelihood(model.model, model.guide, x2, num_samples=20)
    assert torch.allclose(once.log_px, twice.log_px, atol=1e-5)


def test_word_dropout_is_training_only():
    data, model = _tiny(latent_dim=2, word_dropout=0.9)
    z = torch.randn(len(data), 2)
    with torch.no_grad():
        clean = _log_px_given_z(model, data.tokens, z)
    model.word_dropout = 0.0
    with torch.no_grad():
        assert torch.equal(_log_px_given_z(model, data.tokens, z), clean)
    model.word_dropout = 0.9
    torch.manual_seed(0)
    assert not torch.allclose(_log_px_given_z(model, data.tokens, z), clean)  # with gradients: corrupted


# ---------------------------------------------------------------- exact answers on a tiny vocabulary


def test_language_model_is_normalised_over_all_sentences():
    """Sum of p(x) over every sentence of up to 7 words, plus the mass of all 8-word prefixes
    (the sentences that are longer), is exactly 1: the softmax covers the words and <eos>, never <pad> or <bos>."""
    data, model = _tiny(latent_dim=0)
    sentences, seven = _all_sentences(2, 8)
    prefixes = [s + [w] for s in seven for w in (3, 4)]
    x = pad_sentences(sentences)
    with torch.no_grad():
        tr = poutine.trace(model.model).get_trace(x)
        log_px = tr.nodes["x"]["fn"].log_prob(tr.nodes["x"]["value"])
        # prefixes of 8 words: their probability is that of the words, whatever comes next
        p = pad_sentences([s + [EOS] for s in prefixes])
        logits = model.logits(p, None).log_softmax(-1)  # position t scores token t given the ones before
        prefix = logits[:, :-1].gather(-1, (p[:, :-1] - EOS)[..., None]).squeeze(-1).sum(-1)
    total = log_px.double().exp().sum() + prefix.double().exp().sum()
    assert total.item() == pytest.approx(1.0, abs=1e-5)
    # importance sampling of a model without latents returns the exact log p(x)
    res = pyrovae.log_marginal_likelihood(model.model, model.guide, x[:20], num_samples=3)
    assert torch.allclose(res.log_px.float(), log_px[:20], atol=1e-5)


def test_importance_sampling_matches_quadrature_on_a_tiny_vocabulary():
    """d = 1: log p(x) = log ∫ N(z; 0, 1) p(x | z) dz by quadrature on a fine grid, against the
    importance-sampling estimate; and p(x) summed over all sentences (quadrature) is at most 1."""
    data, model = _tiny(latent_dim=1)
    with torch.no_grad():
        for p in model.decoder["init"].parameters():  # make z matter
            p.mul_(8.0)
    x = data.tokens
    grid = torch.linspace(-9, 9, 3601, dtype=torch.float64)
    log_w = torch.distributions.Normal(0.0, 1.0).log_prob(grid) + math.log(grid[1] - grid[0])
    with torch.no_grad():
        z = grid.float()[:, None].repeat_interleave(len(x), 0)
        rows = x.repeat(len(grid), 1)
        cond = _log_px_given_z(model, rows, z).double().reshape(len(grid), len(x))
    exact = torch.logsumexp(cond + log_w[:, None], 0)
    torch.manual_seed(0)
    res = pyrovae.log_marginal_likelihood(model.model, model.guide, x, num_samples=20000)
    assert (res.log_px - exact).abs().max() < 4 * res.stderr.max() + 1e-3
    assert (res.stderr < 0.1).all()  # so that the comparison above is a sharp one
    scores = text_scores(res, x)
    assert scores["num_tokens"] == 16
    assert scores["ppl_per_word"] == pytest.approx(math.exp(-res.log_px.sum().item() / 16))


# ---------------------------------------------------------------- bag of words


def test_bag_of_words_multinomial_is_exact():
    data = from_sentences(TINY)
    counts = bag_of_words(data.tokens, len(data.vocab) - 2)
    assert counts.tolist()[2] == [1.0, 1.0, 3.0]  # <eos>, b, a of "a a b a"
    logits = torch.randn(5, 3)
    d = SentenceMultinomial(counts.sum(-1), logits, validate_args=True)
    expected = torch.stack([torch.distributions.Multinomial(int(c.sum()), logits=lg).log_prob(c)
                            for c, lg in zip(counts, logits)])
    assert torch.allclose(d.log_prob(counts), expected, atol=1e-5)
    model = BagOfWordsVAE(len(data.vocab), 2, (8,))
    res = pyrovae.log_marginal_likelihood(model.model, model.guide, data.tokens, num_samples=20)
    assert res.log_px.shape == (5,) and (res.log_px < 0).all()


# ---------------------------------------------------------------- command line


@pytest.mark.slow  # ~20 s alone: reads the whole of PTB three times (train, evaluate, overwrite)
def test_cli_trains_and_evaluates_a_text_vae(tmp_path):
    root = _ptb_dir()
    run = tmp_path / "tv"
    args = ["train", "--dataset", "ptb", "--model", "text-vae", "--data-dir", str(root), "--train-size", "128",
            "--heldout-size", "16", "--epochs", "1", "--batch-size", "64", "--hidden", "16", "--latent-dim", "4",
            "--model-opt", "embed_dim=16", "--model-opt", "word_dropout=0.2", "--free-bits", "0.5",
            "--no-progress", "--out", str(run)]
    assert main(args) == 0
    for name in ("samples.txt", "reconstructions.txt", "homotopies.txt"):
        assert (run / name).read_text().count("\n") > 5, name
    assert "homotop" in (run / "homotopies.txt").read_text()
    assert main(["evaluate", str(run), "--num-samples", "10", "--no-progress"]) == 0
    summary = json.loads((run / "evaluation-K10.json").read_text())
    assert summary["num_sentences"] == 16 and summary["nll_per_sentence"] > 0
    assert summary["elbo_nll_per_sentence"] >= summary["nll_per_sentence"] - 1e-6  # the IS bound is tighter
    assert summary["ppl_per_word"] == pytest.approx(
        math.exp(summary["nll_per_sentence"] * 16 / summary["num_tokens"]))
    assert main(["sample", str(run), "--num", "3", "--draws"]) == 0
    assert len((run / "samples-seed0.txt").read_text().splitlines()) == 3
    assert main([*args, "--overwrite"]) == 0  # its own text files do not block --overwrite
    assert isinstance(load_text("ptb", "test", root), TextData)


@pytest.mark.slow  # ~30 s: reads PTB, trains two tiny models on 200 sentences
def test_text_example_scores_both_models_and_writes_its_text(tmp_path, capsys):
    import argparse
    import runpy

    root = _ptb_dir()
    example = runpy.run_path(str(Path(__file__).parents[1] / "examples" / "text_vae.py"))
    args = argparse.Namespace(dataset="ptb", data_dir=str(root), train_size=200, test_size=8, epochs=1, batch_size=64,
                              lr=1e-3, latent_dim=4, hidden=16, embed_dim=16, word_dropout=0.2, free_bits=0.5,
                              kl_anneal=10, num_samples=30, out=str(tmp_path / "out"), seed=0, progress=False)
    example["main"](args)
    out = capsys.readouterr().out
    assert "LSTM LM, exact" in out and "importance K=30" in out and "ELBO-based" in out
    for name in ("samples.txt", "reconstructions.txt", "homotopies.txt"):
        assert (tmp_path / "out" / name).exists()
