"""Semi-supervised M2 on MNIST (Kingma et al. 2014), in the style of Pyro's examples/vae/ss_vae_M2.py.

    python examples/ss_vae_m2.py --num-labels 100              # the embedded 10,000 digits, offline
    python examples/ss_vae_m2.py --dataset mnist --data-dir ../shared/data --num-labels 3000 --epochs 50

The model and guide are ``pyrovae.models.M2.model`` / ``.guide``; each batch row is (x, y, labelled)::

    def model(x, y, labelled):                         def guide(x, y, labelled):
        with pyro.plate("data", N):                        with pyro.plate("data", N):
            with mask(~labelled):                              with mask(~labelled):
                y_u = sample("y", Cat(1/10))                       y_u = sample("y", Cat(encoder_y(x)))
                z = sample("z", N(0, I))                           sample("z", N(encoder_z(x, y_u)))
                sample("x", Bern(decoder(z, y_u)), obs=x)      with mask(labelled):
            with mask(labelled):                                   sample("z_label", N(encoder_z(x, y)))
                sample("y_label", Cat(1/10), obs=y)
                z = sample("z_label", N(0, I))
                sample("x_label", Bern(decoder(z, y)), obs=x)
                with scale(46):
                    sample("y_aux", Cat(encoder_y(x)), obs=y)

Training sums y out in the guide (``M2Objective``: TraceEnum_ELBO with the guide enumerated).
"""

import argparse

import pyro
import torch

import pyrovae
from pyrovae.data import add_data_arguments, as_tensors, heldout_generator
from pyrovae.models.m2 import M2, PYRO_TRAINING


def main(args):
    torch.set_num_threads(args.threads)
    pyro.set_rng_seed(args.seed)
    train, test = pyrovae.load_train_test(args.dataset, args.data_dir, args.test_size, args.train_size)
    m2 = M2(num_labels=args.num_labels, latent_dim=args.latent_dim, hidden=args.hidden)

    def report(trainer, record):
        print(f"epoch {record['epoch']}: test accuracy {record['heldout_accuracy']:.4f}, "
              f"held-out ELBO (y summed out) {record['heldout_elbo_enum']:.2f} nats")

    pyrovae.train(m2.model, m2.guide, train, test, objective=m2.default_objective(), epochs=args.epochs,
                  batch_size=PYRO_TRAINING["batch_size"], lr=PYRO_TRAINING["lr"], seed=args.seed,
                  callback=report, verbose=False)  # unlabelled and labelled rows share every batch

    x, y, labelled = as_tensors(m2.prepare_data(test, heldout=True), heldout_generator(args.seed))  # no labels
    n = args.eval_points
    res = pyrovae.log_marginal_likelihood(m2.model, m2.guide, x[:n], y[:n], labelled[:n],
                                          num_samples=args.eval_samples)  # y and z proposed by the guide
    print(f"log p(x) = {res.mean:.2f} +/- {res.mean_stderr:.2f} (Monte Carlo) +/- {res.data_stderr:.2f} (data) "
          f"nats on {len(res)} test digits, K={args.eval_samples}, y summed out")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="semi-supervised M2 on MNIST")
    parser.add_argument("--num-labels", type=int, default=3000, help="labelled training images, balanced per class")
    parser.add_argument("--epochs", type=int, default=PYRO_TRAINING["epochs"])
    parser.add_argument("--seed", type=int, default=0)
    add_data_arguments(parser)  # --dataset, --data-dir, --train-size, --test-size
    parser.add_argument("--latent-dim", type=int, default=50)
    parser.add_argument("--hidden", type=int, nargs="+", default=[500])
    parser.add_argument("--eval-samples", type=int, default=1000, help="importance samples for log p(x)")
    parser.add_argument("--eval-points", type=int, default=1000, help="test digits to evaluate")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    main(parser.parse_args())
