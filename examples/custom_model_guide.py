"""Your own Pyro model/guide pair, trained and evaluated with pyrovae's machinery.

A VAE whose decoder also predicts a per-image brightness offset, written from scratch: no
pyrovae classes, just ``pyro.module``, one ``pyro.plate("data", N)`` and sample sites. Any pair
that follows this contract (``docs/importance_sampling.md``) can use ``pyrovae.train`` and
``pyrovae.log_marginal_likelihood``.

    python examples/custom_model_guide.py
"""

import argparse

import pyro
import pyro.distributions as dist
import torch
from torch import nn

import pyrovae
from pyrovae.data import add_data_arguments


class Decoder(nn.Module):
    def __init__(self, latent_dim, hidden=256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, 784))

    def forward(self, z, shift):
        return self.net(z) + shift  # logits; `shift` brightens or darkens the whole image


class Encoder(nn.Module):
    def __init__(self, latent_dim, hidden=256):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(784, hidden), nn.ReLU())
        self.loc = nn.Linear(hidden, latent_dim + 1)
        self.scale = nn.Linear(hidden, latent_dim + 1)

    def forward(self, x):
        h = self.body(x)
        return self.loc(h), nn.functional.softplus(self.scale(h)) + 1e-4


def make_pair(latent_dim):
    decoder, encoder = Decoder(latent_dim), Encoder(latent_dim)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([latent_dim]).to_event(1))
            shift = pyro.sample("shift", dist.Normal(0.0, 1.0))
            logits = decoder(z, shift.unsqueeze(-1))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = encoder(x)
            pyro.sample("z", dist.Normal(loc[..., :-1], scale[..., :-1]).to_event(1))
            pyro.sample("shift", dist.Normal(loc[..., -1], scale[..., -1]))

    return model, guide


def main(args):
    pyro.set_rng_seed(args.seed)
    train, test = pyrovae.load_train_test(args.dataset, args.data_dir, args.test_size, args.train_size)
    x_test = test.observations(torch.Generator().manual_seed(args.seed))
    model, guide = make_pair(args.latent_dim)
    trainer = pyrovae.train(model, guide, train, x_test, epochs=args.epochs, lr=args.lr, jit=True)
    print(f"held-out ELBO {trainer.history[-1]['heldout_elbo']:.2f} nats after {trainer.epoch} epochs")
    res = pyrovae.log_marginal_likelihood(model, guide, x_test[:500], num_samples=args.eval_samples)
    s = res.summary()
    print(f"log p(x) = {s['mean_log_px']:.2f} +/- {s['mc_stderr']:.2f} nats ({len(res)} digits, "
          f"K={args.eval_samples}); ELBO from the same samples {s['mean_elbo']:.2f}; "
          f"k-hat > 0.7 for {s['share_khat_over_0.7']:.0%}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="a user-written model/guide pair")
    add_data_arguments(parser)  # --dataset, --data-dir, --train-size, --test-size
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--latent-dim", type=int, default=10)
    parser.add_argument("--eval-samples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    main(parser.parse_args())
