"""Autoencoders versus a VAE of the same size: reconstructions, and what decoding N(0, I) gives.

    python examples/autoencoders.py                                  # embedded digits, offline
    python examples/autoencoders.py --dataset mnist --data-dir ../shared/data --epochs 10 \\
        --test-size 10000 --num-samples 10000 --out runs/ae         # docs/autoencoders.md

Plain, denoising, sparse and contractive autoencoders (pyrovae.models.autoencoders) are Pyro pairs
with a Delta guide and no prior, trained by the same SVI trainer as the VAE::

    def model(x):                                          def guide(x):
        with pyro.plate("data", N):                            with pyro.plate("data", N):
            z = pyro.sample("z", ImproperUniform(...))             z = pyro.sample("z", Delta(f(x~)).to_event(1))
            pyro.sample("x", Bernoulli(g(z)), obs=x)
            pyro.factor("penalty", -weight * penalty)

For each model: reconstruction error on test digits, and the Frechet distance to the grey test digits
(features of pyrovae's MNIST classifier, pyrovae.frechet) of reconstructions, of decodes of z ~ N(0, I)
and of decodes of z from a Gaussian fitted to the training codes; one PNG of all, and a JSON.
"""

import argparse
import platform
import sys
import time
from pathlib import Path

import pyro
import torch

import pyrovae
from pyrovae.data import add_data_arguments, heldout_generator
from pyrovae.frechet import frechet_distance
from pyrovae.io import write_json
from pyrovae.models.autoencoders import KINDS, AutoEncoder, assess
from pyrovae.plots import plot_rows


def main(args):
    train, test = pyrovae.load_train_test(args.dataset, args.data_dir, args.test_size, args.train_size)
    x_test = test.with_space("binary-dynamic").observations(heldout_generator(args.seed))  # binarised once
    grey_test = test.with_space("grey").observations()
    x_fit = train.subset(slice(0, 10_000)).with_space("binary-dynamic").observations(torch.Generator().manual_seed(0))
    results, rows, labels = {}, [grey_test[: args.show]], ["test digits"]
    for name in ["vae", *KINDS]:
        pyro.clear_param_store()
        pyro.set_rng_seed(args.seed)
        size = dict(latent_dim=args.latent_dim, hidden=tuple(args.hidden))
        model = pyrovae.VAE(**size) if name == "vae" else AutoEncoder(kind=name, **size)
        start = time.perf_counter()
        trainer = pyrovae.train(model.model, model.guide, train, test, epochs=args.epochs, batch_size=args.batch_size,
                                seed=args.seed, progress=args.progress, verbose=False)
        seconds = time.perf_counter() - start
        scores, images = assess(model, x_fit, x_test, grey_test, args.num_samples)
        results[name] = {**scores, **model.report(), "train_seconds": seconds,
                         "heldout_objective": [r["heldout_elbo"] for r in trainer.history]}  # per epoch
        results[name].pop("no_log_px", None)
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), Path(args.out) / f"{name}.pt")
        rows += [x[: args.show] for x in images.values()]
        labels += [f"{name}: {what}" for what in images]
        fd = scores["frechet"]
        print(f"{name:11s} recon NLL {scores['bernoulli_nll']:6.2f} nats/image, MSE {scores['mse']:.4f} | Frechet: "
              f"recon {fd['reconstructions']:6.1f}, N(0,I) {fd['z ~ N(0, I)']:6.1f}, "
              f"fitted {fd['z ~ fitted Gaussian']:6.1f} | {seconds:.0f} s")
    floor = frechet_distance(grey_test, train.with_space("grey").observations()[: args.num_samples])
    print(f"Frechet distance of {min(args.num_samples, len(train))} training digits to the test digits: {floor:.1f}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        plot_rows(out / "autoencoders.png", rows, labels, (28, 28),
                  f"{args.dataset}, {len(train)} training digits, {args.epochs} epochs, seed {args.seed}")
        meta = {"dataset": args.dataset, "train_size": len(train), "test_size": len(test),
                "binarisation": "dynamic (fresh Bernoulli draw per epoch); test digits binarised once, seed "
                f"{heldout_generator(args.seed).initial_seed()}", "frechet_reference": "grey test digits",
                "epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed, "latent_dim": args.latent_dim,
                "hidden": args.hidden, "num_samples": args.num_samples, "threads": torch.get_num_threads(),
                "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                "pyro": pyro.__version__, "command": " ".join(["python", *sys.argv])}
        write_json(out / "autoencoders.json", {"meta": meta, "results": results,
                                               "frechet_training_digits": floor})
        print("wrote", out / "autoencoders.png", "and", out / "autoencoders.json")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="autoencoders vs a VAE on MNIST")
    add_data_arguments(parser, test_size=1000)  # --dataset, --data-dir, --train-size, --test-size
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--latent-dim", type=int, default=20)
    parser.add_argument("--hidden", type=int, nargs="+", default=[400])
    parser.add_argument("--num-samples", type=int, default=1000, help="decoded samples per Frechet distance")
    parser.add_argument("--show", type=int, default=12, help="images per row of the PNG")
    parser.add_argument("--out", default=None, help="folder for autoencoders.png and autoencoders.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    main(args)
