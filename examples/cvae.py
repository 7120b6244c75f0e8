"""Completing MNIST digits from given quadrants with a conditional VAE (Sohn et al. 2015), beside the
deterministic baseline network, scored by importance sampling of -log p(y | x).

    python examples/cvae.py                                   # embedded digits, 2 quadrants given
    python examples/cvae.py --dataset mnist --data-dir ../shared/data --quadrants 1 --epochs 30

The pair is ``pyrovae.models.cvae.QuadrantCVAE.model`` / ``.guide``::

    def model(x):                                          def guide(x):
        given, hidden = split(x)                               with pyro.plate("data", N):
        with pyro.plate("data", N):                                pyro.sample("z", Normal(*recognition(x)))
            z = pyro.sample("z", Normal(*prior_net(given)))
            pyro.sample("y", Bernoulli(generation(z, given)), obs=hidden)
"""

import argparse

import pyro

import pyrovae
from pyrovae.data import add_data_arguments
from pyrovae.models.cvae import QuadrantCVAE, QuadrantNN


def main(args):
    train, test = pyrovae.load_train_test(args.dataset, args.data_dir, args.test_size, args.train_size)
    test = test.subset(slice(0, args.eval_points))
    for model in (QuadrantNN(quadrants=args.quadrants), QuadrantCVAE(quadrants=args.quadrants)):
        pyro.clear_param_store()
        pyro.set_rng_seed(args.seed)
        x_test = model.prepare_data(test).observations()  # grey values, as Pyro's tutorial
        pyrovae.train(model.model, model.guide, train, x_test, epochs=args.epochs, seed=args.seed)
        res = pyrovae.log_marginal_likelihood(model.model, model.guide, x_test, num_samples=args.eval_samples)
        print(f"{model.name}: -log p(y | x) = {-res.mean:.2f} +/- {res.mean_stderr:.2f} (Monte Carlo) nats on "
              f"{len(res)} test digits with {args.quadrants} quadrant(s) given, K={args.eval_samples}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="CVAE quadrant completion on MNIST")
    add_data_arguments(parser)  # --dataset, --data-dir, --train-size, --test-size
    parser.add_argument("--quadrants", type=int, default=2, choices=[1, 2, 3], help="quadrants given")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--eval-samples", type=int, default=1000, help="importance samples K")
    parser.add_argument("--eval-points", type=int, default=1000, help="test digits to score")
    parser.add_argument("--seed", type=int, default=0)
    main(parser.parse_args())
