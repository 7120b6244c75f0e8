"""The classic VAE on MNIST (Kingma & Welling 2014), as a Pyro model/guide pair.

    python examples/vae.py                       # the embedded 10,000 digits, offline
    python examples/vae.py --dataset mnist --data-dir ../shared/data --epochs 50

The model and guide are ``pyrovae.VAE.model`` / ``.guide``::

    def model(x):                                  def guide(x):
        with pyro.plate("data", N):                    with pyro.plate("data", N):
            z = pyro.sample("z", prior())                  loc, scale = encoder(x)
            pyro.sample("x", likelihood(decoder(z)),       pyro.sample("z", Normal(loc, scale).to_event(1))
                        obs=x)
"""

import argparse

import pyro
import torch

import pyrovae
from pyrovae.data import add_data_arguments


def main(args):
    pyro.set_rng_seed(args.seed)
    train, test = pyrovae.load_train_test(args.dataset, args.data_dir, args.test_size, args.train_size)
    vae = pyrovae.VAE(latent_dim=args.latent_dim, hidden=args.hidden)
    x_test = vae.prepare_data(test).observations(torch.Generator().manual_seed(args.seed))  # binarised once

    trainer = pyrovae.train(
        vae.model, vae.guide, train, x_test, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, objective=args.objective, num_particles=args.particles, seed=args.seed,
    )  # the VAE's likelihood picks the data space (binarised digits) and checks the data
    print(f"held-out ELBO after {trainer.epoch} epochs: {trainer.history[-1]['heldout_elbo']:.2f} nats")

    res = pyrovae.log_marginal_likelihood(vae.model, vae.guide, x_test[: args.eval_points],
                                          num_samples=args.eval_samples)
    print(f"log p(x) = {res.mean:.2f} +/- {res.mean_stderr:.2f} (Monte Carlo) nats on "
          f"{len(res)} test digits, K={args.eval_samples}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="VAE on MNIST")
    add_data_arguments(parser)  # --dataset, --data-dir, --train-size, --test-size
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--latent-dim", type=int, default=20)
    parser.add_argument("--hidden", type=int, nargs="+", default=[400])
    parser.add_argument("--objective", default="elbo", choices=["elbo", "meanfield", "iwae"])
    parser.add_argument("--particles", type=int, default=1)
    parser.add_argument("--eval-samples", type=int, default=1000, help="importance samples for log p(x)")
    parser.add_argument("--eval-points", type=int, default=1000, help="test digits to evaluate")
    parser.add_argument("--seed", type=int, default=0)
    main(parser.parse_args())
