"""M1+M2 on MNIST (Kingma et al. 2014, §3.2): a VAE first (M1), then semi-supervised M2 on its codes.

    python examples/ss_vae_m1m2.py --num-labels 100                 # the embedded 10,000 digits, offline
    python examples/ss_vae_m1m2.py --dataset mnist --data-dir ../shared/data --num-labels 100 \\
        --m1-epochs 60 --epochs 150

M1 is ``pyrovae.models.VAE``: p(z1) p(x | z1) and q(z1 | x). M2 is ``pyrovae.models.M1M2``, with
M1's code z1 where M2 has the image; each batch row is (x, y, labelled)::

    def model(x, y, labelled):                          def guide(x, y, labelled):
        with pyro.plate("data", N):                         with pyro.plate("data", N):
            with mask(~labelled):                               with mask(~labelled):
                y_u = sample("y", Cat(1/10))                        z1 = sample("z1", N(m1.encoder(x)))
                z2 = sample("z2", N(0, I))                          y_u = sample("y", Cat(encoder_y(z1)))
                z1 = sample("z1", N(decoder(z2, y_u)))              sample("z2", N(encoder_z(z1, y_u)))
                sample("x", Bern(m1.decoder(z1)), obs=x)        with mask(labelled):
            with mask(labelled):                                    z1 = sample("z1_label", N(m1.encoder(x)))
                sample("y_label", Cat(1/10), obs=y)                 sample("z2_label", N(encoder_z(z1, y)))
                z2 = sample("z2_label", N(0, I))
                z1 = sample("z1_label", N(decoder(z2, y)))
                sample("x_label", Bern(m1.decoder(z1)), obs=x)
                with scale(alpha):
                    sample("y_aux", Cat(encoder_y(z1)), obs=y)

Only M2's networks are registered with Pyro, so M1 stays as trained; M2 sees M1's active units only
(docs/zoo.md). Training sums y out in the guide (``M2Objective``).
"""

import argparse

import pyro
import torch

import pyrovae
from pyrovae.data import add_data_arguments, as_tensors, heldout_generator
from pyrovae.models import M1M2, VAE
from pyrovae.models.m1m2 import M1M2_TRAINING


def main(args):
    torch.set_num_threads(args.threads)
    pyro.set_rng_seed(args.seed)
    train, test = pyrovae.load_train_test(args.dataset, args.data_dir, args.test_size, args.train_size)

    m1 = VAE(latent_dim=args.m1_latent_dim, hidden=args.m1_hidden)
    fit = pyrovae.train(m1.model, m1.guide, train, test, epochs=args.m1_epochs, batch_size=100, lr=1e-3,
                        seed=args.seed, progress=False, verbose=False)
    print(f"M1: held-out ELBO {fit.history[-1]['heldout_elbo']:.2f} nats after {fit.epoch} epochs")

    m1m2 = M1M2(m1=m1, num_labels=args.num_labels, latent_dim=args.latent_dim, hidden=args.hidden)

    def report(trainer, record):
        print(f"epoch {record['epoch']}: test accuracy {record['heldout_accuracy']:.4f}, "
              f"held-out ELBO (y summed out) {record['heldout_elbo_enum']:.2f} nats")

    pyrovae.train(m1m2.model, m1m2.guide, train, test, objective=m1m2.default_objective(), epochs=args.epochs,
                  batch_size=M1M2_TRAINING["batch_size"], lr=M1M2_TRAINING["lr"], seed=args.seed,
                  progress=False, callback=report, verbose=False)
    print(f"M2 modelled {m1m2.report()['m1_units_modelled']} of M1's {args.m1_latent_dim} units (the active ones)")

    x, y, labelled = as_tensors(m1m2.prepare_data(test, heldout=True), heldout_generator(args.seed))
    n = args.eval_points
    res = pyrovae.log_marginal_likelihood(m1m2.model, m1m2.guide, x[:n], y[:n], labelled[:n],
                                          num_samples=args.eval_samples)  # y, z1 and z2 proposed by the guide
    print(f"log p(x) = {res.mean:.2f} +/- {res.mean_stderr:.2f} (Monte Carlo) +/- {res.data_stderr:.2f} (data) "
          f"nats on {len(res)} test digits, K={args.eval_samples}, y summed out")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="M1+M2: semi-supervised M2 on the codes of a VAE")
    parser.add_argument("--num-labels", type=int, default=100, help="labelled training images, balanced per class")
    parser.add_argument("--m1-epochs", type=int, default=40)
    parser.add_argument("--m1-latent-dim", type=int, default=50)
    parser.add_argument("--m1-hidden", type=int, nargs="+", default=[600, 600])
    parser.add_argument("--epochs", type=int, default=M1M2_TRAINING["epochs"])
    parser.add_argument("--seed", type=int, default=0)
    add_data_arguments(parser)  # --dataset, --data-dir, --train-size, --test-size
    parser.add_argument("--latent-dim", type=int, default=50, help="dimension of z2")
    parser.add_argument("--hidden", type=int, nargs="+", default=[500])
    parser.add_argument("--eval-samples", type=int, default=1000, help="importance samples for log p(x)")
    parser.add_argument("--eval-points", type=int, default=1000, help="test digits to evaluate")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    main(parser.parse_args())
