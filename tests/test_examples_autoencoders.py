"""examples/autoencoders.py runs end to end (shortened) and reports every model."""

import argparse
import json


def test_autoencoders_example_scores_every_model_and_writes_the_picture(tmp_path, capsys, load_example):
    module = load_example("autoencoders")
    args = argparse.Namespace(dataset="embedded", data_dir=None, epochs=1, train_size=300, test_size=100,
                              batch_size=100, latent_dim=4, hidden=[32], num_samples=100, show=4, out=str(tmp_path),
                              seed=0, progress=False)
    results = module.main(args)
    out = capsys.readouterr().out
    names = ["vae", "plain", "denoising", "sparse", "contractive"]
    assert list(results) == names and all(name in out for name in names) and "Frechet" in out
    for r in results.values():
        assert r["bernoulli_nll"] > 0 and 0 < r["mse"] < 1
        assert set(r["frechet"]) == {"reconstructions", "z ~ N(0, I)", "z ~ fitted Gaussian"}
    assert (tmp_path / "autoencoders.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "autoencoders.json").read_text())
    assert saved["meta"]["epochs"] == 1 and saved["results"]["contractive"]["kind"] == "contractive"
