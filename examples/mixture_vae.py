"""A mixture VAE with an enumerated class (Aziz's P(x) = sum_c P(c) P(x | c); GMVAE): trained with
TraceEnum_ELBO, scored by importance sampling with c summed out, and clustered without labels.

    python examples/mixture_vae.py                            # embedded digits
    python examples/mixture_vae.py --dataset mnist --data-dir ../shared/data --epochs 30

The pair is ``pyrovae.models.mixture.MixtureVAE.model`` / ``.guide``::

    def model(x):                                              def guide(x):
        with pyro.plate("data", N):                                with pyro.plate("data", N):
            c = pyro.sample("c", Categorical(pi),                      pyro.sample("z", Normal(*encoder(x)))
                            infer={"enumerate": "parallel"})
            z = pyro.sample("z", Normal(mu[c], sigma[c]))
            pyro.sample("x", Bernoulli(decoder(z)), obs=x)
"""

import argparse

import pyro

import pyrovae
from pyrovae.data import add_data_arguments
from pyrovae.models.mixture import MixtureVAE, cluster_accuracy


def main(args):
    pyro.set_rng_seed(args.seed)
    train, test = pyrovae.load_train_test(args.dataset, args.data_dir, args.test_size, args.train_size)
    model = MixtureVAE(components=args.components, latent_dim=args.latent_dim)
    x_test = model.prepare_data(test).observations()  # binarised once
    pyrovae.train(model.model, model.guide, train, x_test, epochs=args.epochs, objective="enum", seed=args.seed)

    res = pyrovae.log_marginal_likelihood(model.model, model.guide, x_test[: args.eval_points],
                                          num_samples=args.eval_samples)
    print(f"log p(x) = {res.mean:.2f} +/- {res.mean_stderr:.2f} (Monte Carlo) nats on {len(res)} test digits, "
          f"K={args.eval_samples}, class summed out in every weight")
    clusters = model.class_posterior(x_test).argmax(-1)
    print(f"clustering accuracy (cluster -> majority label): {cluster_accuracy(clusters, test.labels)['accuracy']:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="mixture VAE on MNIST")
    add_data_arguments(parser)  # --dataset, --data-dir, --train-size, --test-size
    parser.add_argument("--components", type=int, default=10)
    parser.add_argument("--latent-dim", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--eval-samples", type=int, default=1000, help="importance samples K")
    parser.add_argument("--eval-points", type=int, default=1000, help="test digits to score")
    parser.add_argument("--seed", type=int, default=0)
    main(parser.parse_args())
