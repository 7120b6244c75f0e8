"""Re-create pyrovae/_embedded/mnist_classifier.pt, the feature network of pyrovae.frechet.

    PYROVAE_DATA=../shared/data python benchmarks/train_classifier.py --threads 1

A 784-256-128-10 ReLU MLP (pyrovae.frechet.MNISTClassifier) trained on the 60,000 MNIST training
digits as grey values k/255: Adam, lr 1e-3 halved every 4 epochs, batch 128, 12 epochs, seed 0, cross-entropy.
Saved as a float16 state dict; prints the test accuracy of the saved (float16) weights, which
pyrovae/_embedded/README.md records.
"""

import argparse
import hashlib
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import pyrovae
from pyrovae.frechet import WEIGHTS, MNISTClassifier, classifier_accuracy

OUT = Path(pyrovae.__file__).parent / "_embedded" / WEIGHTS


def main(args):
    torch.manual_seed(args.seed)
    train = pyrovae.load_dataset("mnist", "train", args.data_dir).with_space("grey")
    test = pyrovae.load_dataset("mnist", "test", args.data_dir).with_space("grey")
    x, y = train.observations(), train.labels
    x_test, y_test = test.observations(), test.labels
    net = MNISTClassifier()
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(len(x))
        for idx in order.split(args.batch_size):
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        print(f"epoch {epoch}: test accuracy {classifier_accuracy(x_test, y_test, net.eval()):.4f}")
        net.train()
    state = {k: v.half() for k, v in net.state_dict().items()}
    torch.save(state, args.out)
    saved = MNISTClassifier()
    saved.load_state_dict({k: v.float() for k, v in torch.load(args.out, weights_only=True).items()})
    saved.eval()
    print(f"trained in {time.perf_counter() - start:.0f} s; float16 weights: test accuracy "
          f"{classifier_accuracy(x_test, y_test, saved):.4f} (all 10,000), "
          f"{classifier_accuracy(x_test[:1000], y_test[:1000], saved):.4f} (first 1,000); "
          f"{Path(args.out).stat().st_size} bytes, SHA-256 {hashlib.sha256(Path(args.out).read_bytes()).hexdigest()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="torchvision layout; default $PYROVAE_DATA")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    main(args)
