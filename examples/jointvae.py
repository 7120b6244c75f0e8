"""JointVAE (Dupont 2018): a Gaussian z and a relaxed categorical code c, trained by capacity.

    python examples/jointvae.py                                   # embedded digits, offline
    python examples/jointvae.py --dataset mnist --data-dir ../shared/data --epochs 30

Dupont's MNIST objective, per datapoint (seed slides; ``pyrovae.CapacityELBO``)::

    E_q[log p(x | z, c)] - gamma |KL_z - C_z| - gamma |KL_c - C_c|,
    C_z: 0 -> 5 nats and C_c: 0 -> min(5, log 10) nats over 25,000 steps, gamma = 30, lr 5e-4, batch 64

The capacities are factors (``pyrovae.factor``) that the trainer ramps per step
(``vae.training_schedules()``); the compiled loss reads them as graph inputs. The same run from
the command line: ``pyrovae train --model jointvae --lr 5e-4 --batch-size 64``.
"""

import argparse
from pathlib import Path

import pyro
import torch

import pyrovae
from pyrovae.data import add_data_arguments, heldout_generator
from pyrovae.models.jointvae import JointVAE


def main(args):
    pyro.set_rng_seed(args.seed)
    train, test = pyrovae.load_train_test(args.dataset, args.data_dir, args.test_size, args.train_size)
    vae = JointVAE(latent_dim=args.latent_dim, categories=args.categories, hidden=tuple(args.hidden),
                   capacity_steps=args.capacity_steps)
    trainer = pyrovae.train(
        vae.model, vae.guide, train, test, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        objective=vae.default_objective(), schedules=vae.training_schedules(), seed=args.seed,
        progress=args.progress,
    )  # held-out batches carry the labels, for the code accuracy; training never sees them
    last = trainer.history[-1]
    print(f"after {trainer.epoch} epochs: held-out ELBO {last['heldout_elbo']:.2f} nats, KL_z {last['kl_z']:.2f}, "
          f"KL_c {last['kl_c']:.2f} nats, code accuracy after matching {last['code_accuracy']:.3f}")

    x_test = vae.prepare_data(test).observations(heldout_generator(args.seed))  # as the trainer drew it
    res = pyrovae.log_marginal_likelihood(vae.model, vae.guide, x_test, num_samples=args.num_samples)
    print(f"log p(x) of the relaxed-code model = {res.mean:.2f} +/- {res.data_stderr:.2f} (over data) "
          f"+/- {res.mean_stderr:.2f} (Monte Carlo) nats on {len(res)} test digits, K={args.num_samples}")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        print("wrote", ", ".join(vae.write_pictures(Path(args.out), test, trainer.history, args.seed)))
    return res


if __name__ == "__main__":
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description="JointVAE on MNIST")
    add_data_arguments(parser, test_size=1000)  # --dataset, --data-dir, --train-size, --test-size
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--latent-dim", type=int, default=10)
    parser.add_argument("--categories", type=int, default=10)
    parser.add_argument("--hidden", type=int, nargs="+", default=[512, 256])
    parser.add_argument("--capacity-steps", type=int, default=25_000, help="steps of the capacity ramps")
    parser.add_argument("--num-samples", type=int, default=1000, help="importance samples for log p(x)")
    parser.add_argument("--out", default=None, help="folder for the pictures (traversals, codes)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    main(parser.parse_args())
