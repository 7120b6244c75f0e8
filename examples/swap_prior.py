"""Same VAE, different priors p(z), ranked by test log p(x) with paired standard errors.

Only the ``prior`` argument changes: the standard Normal, a learned diagonal Normal, a
mixture of Gaussians, the VampPrior (Tomczak & Welling 2018) and a normalizing-flow prior.
All score the same binarised test images, so their differences are paired.

    python examples/swap_prior.py                                        # embedded digits
    python examples/swap_prior.py --dataset mnist --data-dir ../shared/data --epochs 50
"""

import argparse

import pyrovae
from pyrovae.data import add_data_arguments
from pyrovae.scoring import fit_and_score, format_comparison

# label: (prior, its options)
VARIANTS = {
    "normal": ("normal", {}),
    "learned-normal": ("learned-normal", {}),
    "mog-10": ("mog", {"components": 10}),
    "vamp-100": ("vamp", {"pseudo_inputs": 100}),
    "flow": ("flow", {}),
}


def main(args):
    train, test = pyrovae.load_train_test(args.dataset, args.data_dir, args.test_size, args.train_size)
    scored = []
    for label in args.variants:
        prior, options = VARIANTS[label]
        vae = pyrovae.VAE(latent_dim=args.latent_dim, hidden=args.hidden, prior=prior, prior_options=options,
                          name=label)
        scored.append(fit_and_score(label, vae, train, test, epochs=args.epochs, num_samples=args.num_samples,
                                    seed=args.seed, jit=True, progress=args.progress))
        print(f"{label}: {scored[-1].log_px.mean():.2f} nats/image", flush=True)
    print()
    print(format_comparison(scored))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="VAE priors ranked by test log p(x)")
    add_data_arguments(parser, test_size=1000)  # --dataset, --data-dir, --train-size, --test-size
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--latent-dim", type=int, default=20)
    parser.add_argument("--hidden", type=int, nargs="+", default=[400])
    parser.add_argument("--num-samples", type=int, default=1000, help="importance samples per test image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true", help="progress bars")
    main(parser.parse_args())
