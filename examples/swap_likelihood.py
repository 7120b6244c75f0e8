"""Same VAE, different likelihoods p(x|z), compared on one footing.

Only the ``likelihood`` argument changes between the models (and the data space it scores:
binarised pixels for a Bernoulli, dequantised grey levels for densities, quantised levels
for a categorical). Test log p(x) is estimated by importance sampling and put on one scale:
densities on dequantised images and categoricals over grey levels become log-masses of the
8-bit images (nats per image and bits per dimension), ranked with paired standard errors.
The Bernoulli models a different data set (binarised images), so it is shown apart.

    python examples/swap_likelihood.py                                   # embedded digits
    python examples/swap_likelihood.py --dataset fashion-mnist --data-dir ../shared/data
"""

import argparse

import pyrovae
from pyrovae.data import add_data_arguments
from pyrovae.scoring import fit_and_score, format_comparison

# label: (likelihood, its options, data space, grey levels)
VARIANTS = {
    "bernoulli": ("bernoulli", {}, "binary-dynamic", None),
    "continuous-bernoulli": ("continuous-bernoulli", {}, "dequantized", None),
    "gaussian-sigma0.1": ("gaussian", {"sigma": 0.1}, "dequantized", None),
    "gaussian-learned-global": ("gaussian-learned", {"scale": "global"}, "dequantized", None),
    "gaussian-learned-pixel": ("gaussian-learned", {"scale": "pixel"}, "dequantized", None),
    "gaussian-learned-datapoint": ("gaussian-learned", {"scale": "datapoint"}, "dequantized", None),
    "laplace": ("laplace", {}, "dequantized", None),
    "beta": ("beta", {}, "dequantized", None),
    "categorical-16-levels": ("categorical", {"levels": 16}, "levels", 16),
}


def main(args):
    train, test = pyrovae.load_train_test(args.dataset, args.data_dir, args.test_size, args.train_size)
    scored = []
    for label in args.variants:
        likelihood, options, space, levels = VARIANTS[label]
        vae = pyrovae.VAE(latent_dim=args.latent_dim, hidden=args.hidden, likelihood=likelihood,
                          likelihood_options=options, name=label)
        scored.append(fit_and_score(label, vae, train.with_space(space, levels), test.with_space(space, levels),
                                    epochs=args.epochs, num_samples=args.num_samples, seed=args.seed, jit=True,
                                    progress=args.progress))
        print(f"{label}: {scored[-1].log_px.mean():.2f} nats/image on the {scored[-1].summary['scale']} scale",
              flush=True)
    print()
    print(format_comparison(scored))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="VAE likelihoods compared on one scale")
    add_data_arguments(parser, test_size=1000)  # --dataset, --data-dir, --train-size, --test-size
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--latent-dim", type=int, default=20)
    parser.add_argument("--hidden", type=int, nargs="+", default=[400])
    parser.add_argument("--num-samples", type=int, default=1000, help="importance samples per test image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true", help="progress bars")
    main(parser.parse_args())
