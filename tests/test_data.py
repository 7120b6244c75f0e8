import gzip
import hashlib
from importlib import resources

import numpy as np
import pytest
import torch

import pyrovae
from pyrovae.data import DataError, check_observations, load_dataset, minibatches


def test_embedded_subset_is_the_documented_file(embedded):
    folder = resources.files("pyrovae") / "_embedded"
    raw = gzip.decompress((folder / "mnist-train-10k-images-idx3-ubyte.gz").read_bytes())
    assert hashlib.md5(raw).hexdigest() == "63a563d3843dba5073e604e3a7990e87"
    assert embedded.images.shape == (10000, 784) and embedded.images.dtype == torch.uint8
    counts = torch.bincount(embedded.labels).tolist()
    assert counts == [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]


def test_dynamic_binarisation_draws_fresh_bernoullis(embedded):
    d = embedded.subset(slice(0, 2000))
    a = d.observations(torch.Generator().manual_seed(0))
    b = d.observations(torch.Generator().manual_seed(0))
    c = d.observations(torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.unique().tolist()) == {0.0, 1.0}
    # E[x] = k/255: the mean over 1.6M pixels is within a few standard errors of it
    p = d.images.double() / 255
    se = (p * (1 - p)).sum().sqrt() / p.numel()
    assert abs(a.double().mean() - p.mean()) < 5 * se


def test_other_data_spaces(embedded):
    d = embedded.subset(slice(0, 100))
    k = d.images.double()
    thr = d.with_space("binary-threshold").observations()
    assert torch.equal(thr, (k > 127.5).float())
    grey = d.with_space("grey").observations()
    assert torch.allclose(grey.double(), k / 255)
    deq = d.with_space("dequantized").observations(torch.Generator().manual_seed(0)).double()
    assert (deq >= k / 256).all() and (deq < (k + 1) / 256).all()
    lv = d.with_space("levels", levels=16).observations()
    assert torch.equal(lv.long(), d.images.long() // 16) and lv.max() <= 15


def test_user_tensors_are_accepted_and_checked():
    imgs = np.random.default_rng(0).integers(0, 256, size=(10, 28, 28), dtype=np.uint8)
    d = pyrovae.from_tensor(imgs, labels=np.arange(10))
    assert d.images.shape == (10, 784) and d.image_shape == (28, 28)
    f = pyrovae.from_tensor(torch.from_numpy(imgs).float() / 255)
    assert torch.equal(f.images, d.images)
    bad = torch.rand(4, 5)
    bad[1, 2] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        pyrovae.from_tensor(bad)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        pyrovae.from_tensor(torch.rand(4, 5) * 3)


def test_check_observations_messages():
    with pytest.raises(DataError, match="shape"):
        check_observations(torch.zeros(3, 28, 28))
    with pytest.raises(DataError, match="expects 784"):
        check_observations(torch.zeros(3, 100), data_dim=784)
    x = torch.zeros(5, 4)
    x[3, 0] = float("inf")
    with pytest.raises(DataError, match=r"rows \[3\]"):
        check_observations(x)


def test_minibatches_visit_every_row_once():
    x = torch.arange(103.0).unsqueeze(1)
    seen = torch.cat(list(minibatches(x, 10, torch.Generator().manual_seed(0))))
    assert len(seen) == 103 and torch.equal(seen.sort(0).values, x)


def test_missing_files_offline_give_a_clear_error(tmp_path, monkeypatch):
    import urllib.error

    import torchvision

    def offline(*args, **kwargs):  # what torchvision meets on a machine without internet
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", offline)
    with pytest.raises(DataError) as err:
        load_dataset("mnist", "train", data_dir=tmp_path)
    msg = str(err.value)
    assert "train-images-idx3-ubyte.gz" in msg and "PYROVAE_DATA" in msg and str(tmp_path) in msg


def test_full_mnist_via_torchvision_matches_the_embedded_subset(mnist_dir, embedded, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # the unpacked mirror goes here
    before = sorted(p.name for p in (mnist_dir / "MNIST" / "raw").iterdir())
    train = load_dataset("mnist", "train", data_dir=mnist_dir)
    test = load_dataset("mnist", "test", data_dir=mnist_dir)
    assert len(train) == 60000 and len(test) == 10000
    assert torch.equal(train.images[:10000], embedded.images)
    assert torch.equal(train.labels[:10000], embedded.labels)
    # the data folder is read, never written
    assert sorted(p.name for p in (mnist_dir / "MNIST" / "raw").iterdir()) == before
