"""Copy a run of examples/autoencoders.py into the repository and print the table of docs/autoencoders.md.

    python benchmarks/autoencoders_table.py runs/ae50            # -> benchmarks/results/autoencoders.json,
                                                                  #    docs/images/autoencoders/autoencoders.png
    python benchmarks/autoencoders_table.py runs/ae --no-copy     # only the table of another run
    python benchmarks/autoencoders_table.py runs/ae50 --spread 5  # and 5 fresh draws of the samples per model
    python benchmarks/autoencoders_table.py runs/ae --results benchmarks/results/autoencoders-30epochs.json --no-image

The copied JSON holds the run's autoencoders.json and, with --spread, the redrawn distances ("sample_spread").
"""

import argparse
import json
import shutil
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "autoencoders.json"
IMAGES = Path(__file__).parents[1] / "docs" / "images" / "autoencoders"


def table(saved: dict) -> str:
    meta = saved["meta"]
    lines = [
        "| model | recon NLL (nats/image) | MSE/pixel | Fréchet: reconstructions | Fréchet: z ~ N(0, I) | "
        "Fréchet: z ~ fitted Gaussian | code std | held-out objective | train time |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    order = ["vae", "plain", "denoising", "sparse", "contractive"]
    for name in sorted(saved["results"], key=lambda n: order.index(n) if n in order else len(order)):
        r = saved["results"][name]
        fd = r["frechet"]
        objective = r["heldout_objective"][-1]
        what = {"vae": "ELBO", "plain": "recon", "denoising": "recon of masked inputs"}.get(name, "recon − penalty")
        lines.append(
            f"| {name} | {r['bernoulli_nll']:.2f} | {r['mse']:.4f} | {fd['reconstructions']:.1f} | "
            f"{fd['z ~ N(0, I)']:.1f} | {fd['z ~ fitted Gaussian']:.1f} | {r['code_std']:.2f} | "
            f"{objective:.2f} ({what}) | {r['train_seconds'] / 60:.1f} min |"
        )
    lines.append("")
    lines.append(f"Reference: the Fréchet distance of {meta['num_samples']} training digits to the test digits is "
                 f"{saved['frechet_training_digits']:.1f}.")
    lines.append("")
    lines.append(f"{meta['dataset']}, {meta['train_size']} training digits, {meta['epochs']} epochs each, batch "
                 f"{meta['batch_size']}, seed {meta['seed']}, {meta['latent_dim']}-d code, hidden {meta['hidden']}, "
                 f"{meta['binarisation']}; Fréchet distances of {meta['num_samples']} images to the "
                 f"{meta['test_size']} {meta['frechet_reference']}; torch {meta['torch']}, pyro {meta['pyro']}, "
                 f"{meta['threads']} thread; `{meta['command']}`")
    return "\n".join(lines)


def spread(run: Path, saved: dict, repeats: int, data_dir=None) -> dict:
    """Fréchet distances of ``repeats`` fresh sets of decoded samples (seeds 1..repeats) per model, from the
    run's saved parameters: how much of a difference between models is the draw of the samples."""
    import pyrovae
    from pyrovae.frechet import frechet_distance
    from pyrovae.models.autoencoders import AutoEncoder, code_gaussian, decoded, latent_codes

    meta = saved["meta"]
    train, test = pyrovae.load_train_test(meta["dataset"], data_dir, test_size=meta["test_size"])
    grey = test.with_space("grey").observations()
    x_fit = train.subset(slice(0, 10_000)).with_space("binary-dynamic").observations(torch.Generator().manual_seed(0))
    size = dict(latent_dim=meta["latent_dim"], hidden=tuple(meta["hidden"]))
    out = {}
    for name in saved["results"]:
        model = pyrovae.VAE(**size) if name == "vae" else AutoEncoder(kind=name, **size)
        model.load_state_dict(torch.load(run / f"{name}.pt", weights_only=True))
        gaussian = code_gaussian(latent_codes(model, x_fit))
        rows = {"z ~ N(0, I)": [], "z ~ fitted Gaussian": []}
        for seed in range(1, repeats + 1):
            torch.manual_seed(seed)
            rows["z ~ N(0, I)"].append(frechet_distance(grey, decoded(model, meta["num_samples"])))
            rows["z ~ fitted Gaussian"].append(frechet_distance(grey, decoded(model, meta["num_samples"], gaussian)))
        out[name] = {k: {"mean": torch.tensor(v).mean().item(), "sd": torch.tensor(v).std().item(), "values": v}
                     for k, v in rows.items()}
        print(name, {k: f"{v['mean']:.1f} ± {v['sd']:.1f}" for k, v in out[name].items()})
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the --out folder of examples/autoencoders.py")
    parser.add_argument("--no-copy", dest="copy", action="store_false")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON is copied")
    parser.add_argument("--no-image", dest="image", action="store_false", help="do not copy the PNG")
    parser.add_argument("--spread", type=int, default=0, metavar="N",
                        help="also redraw the samples N times from the saved models (writes spread.json in the run)")
    parser.add_argument("--data-dir", default=None, help="torchvision layout; default $PYROVAE_DATA")
    args = parser.parse_args()
    torch.set_num_threads(1)
    saved = json.loads((args.run / "autoencoders.json").read_text())
    if args.spread:
        (args.run / "spread.json").write_text(json.dumps(spread(args.run, saved, args.spread, args.data_dir), indent=1))
    if (args.run / "spread.json").exists():
        saved["sample_spread"] = json.loads((args.run / "spread.json").read_text())
    if args.copy:
        args.results.write_text(json.dumps(saved, indent=1, sort_keys=True) + "\n")
        print(f"wrote {args.results}")
        if args.image:
            IMAGES.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(args.run / "autoencoders.png", IMAGES / "autoencoders.png")
            print(f"copied {IMAGES / 'autoencoders.png'}")
    print(table(saved))
