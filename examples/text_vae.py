"""A sentence VAE on the Penn Treebank (Bowman et al. 2016), against the LSTM language model.

    python examples/text_vae.py --data-dir ../shared/data --train-size 2000 --epochs 1   # a minute or two
    python examples/text_vae.py --data-dir ../shared/data --epochs 6 --out runs/text/example

The pair is ``pyrovae.models.TextVAE.model`` / ``.guide`` (``pyrovae train --model text-vae
--dataset ptb`` runs the same one)::

    def model(x):                                        def guide(x):
        with pyro.plate("data", N):                          with pyro.plate("data", N):
            z = pyro.sample("z", Normal(0, 1).to_event(1))       loc, scale = lstm_encoder(x)
            logits = lstm_decoder(x, z)  # teacher-forced        pyro.sample("z", Normal(loc, scale).to_event(1))
            pyro.sample("x", Categorical(logits=logits)
                        .mask(x != PAD).to_event(1), obs=x)

Both models are trained by the same code with the same budget (epochs, batch size, optimiser); the
VAE with KL warm-up, free bits and (optionally) word dropout. Test sentences are scored by importance
sampling (the VAE, K samples) and exactly (the language model, which has no latent), beside the
ELBO-based figures many papers quote. Samples from the prior, reconstructions and homotopies are
written into ``--out``.
"""

import argparse
from pathlib import Path

import pyro

import pyrovae
from pyrovae.infer.weighted import kl_weighting
from pyrovae.models.text import TextLM, TextVAE, text_scores, write_text_outputs
from pyrovae.text import load_text


def main(args):
    pyro.set_rng_seed(args.seed)
    train = load_text(args.dataset, "train", args.data_dir)
    test = load_text(args.dataset, "test", args.data_dir)
    if args.train_size:
        train = train.subset(slice(0, args.train_size))
    test = test.sample(min(args.test_size, len(test)), args.seed)  # a random subset, the same for both models
    print(f"{len(train):,} training sentences ({train.num_tokens:,} tokens with <eos>), {len(test)} test sentences, "
          f"vocabulary of {len(train.vocab):,} ids")
    sizes = dict(hidden=(args.hidden,), embed_dim=args.embed_dim)
    vae = TextVAE(len(train.vocab), args.latent_dim, word_dropout=args.word_dropout, **sizes)
    lm = TextLM(len(train.vocab), **sizes)
    anneal = pyrovae.linear(0.0, 1.0, args.kl_anneal) if args.kl_anneal else None
    objective, schedules = kl_weighting(kl_anneal=anneal, free_bits=args.free_bits or None)
    fit = dict(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, progress=args.progress)
    for name, m, obj, sched in (("LSTM language model", lm, "elbo", None), ("VAE", vae, objective, schedules)):
        trainer = pyrovae.Trainer(m.model, m.guide, objective=obj, schedules=sched, lr=args.lr, clip_norm=5.0,
                                  jit=False)
        trainer.fit(train, test, **fit)  # batches by sentence length (TextData.minibatches)
        seconds = sum(r["seconds"] for r in trainer.history)
        print(f"{name}: {trainer.epoch} epochs, {seconds / trainer.epoch:.0f} s per epoch")
    x = test.tokens
    lm.eval(), vae.eval()
    exact = text_scores(pyrovae.log_marginal_likelihood(lm.model, lm.guide, x, num_samples=1), x)
    res = pyrovae.log_marginal_likelihood(vae.model, vae.guide, x, num_samples=args.num_samples,
                                          chunk_size=vae.evaluation_chunk_size)
    scores = text_scores(res, x)
    kl = vae.heldout_metrics(x)["heldout_kl"]
    print(f"on {len(x)} test sentences ({scores['num_tokens']:,} tokens, <eos> counted):")
    print(f"  LSTM LM, exact:         NLL {exact['nll_per_sentence']:7.2f} nats/sentence, "
          f"PPL {exact['ppl_per_word']:8.2f}")
    print(f"  VAE, importance K={args.num_samples:<5d} NLL {scores['nll_per_sentence']:7.2f} "
          f"(MC s.e. {scores['nll_mc_stderr']:.2f}), PPL {scores['ppl_per_word']:8.2f}")
    print(f"  VAE, ELBO-based:        NLL <= {scores['elbo_nll_per_sentence']:7.2f}, "
          f"PPL <= {scores['elbo_ppl_per_word']:8.2f}; KL {kl:.2f} nats/sentence")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = write_text_outputs(vae, out, test, args.seed)
    print(f"wrote {', '.join(written)} into {out}")
    print("\n".join((out / "samples.txt").read_text().splitlines()[:7]))  # the header and 3 samples
    print((out / "homotopies.txt").read_text().split("\n\n")[0])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="sentence VAE and LSTM language model on the Penn Treebank")
    parser.add_argument("--dataset", default="ptb", choices=["ptb"])
    parser.add_argument("--data-dir", default=None, help="folder that holds PTB/ptb.*.txt(.gz); default $PYROVAE_DATA")
    parser.add_argument("--train-size", type=int, default=None, help="use only the first N training sentences")
    parser.add_argument("--test-size", type=int, default=200, help="random test sentences to score")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--latent-dim", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=200, help="LSTM width")
    parser.add_argument("--embed-dim", type=int, default=200)
    parser.add_argument("--word-dropout", type=float, default=0.0, help="Bowman et al.'s word dropout")
    parser.add_argument("--free-bits", type=float, default=0.125, help="KL floor in nats per latent dimension")
    parser.add_argument("--kl-anneal", type=int, default=1300, help="KL warm-up over this many steps (0: none)")
    parser.add_argument("--num-samples", type=int, default=500, help="importance samples K per sentence")
    parser.add_argument("--out", default="runs/text/example", help="folder for samples, reconstructions, homotopies")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    main(parser.parse_args())
