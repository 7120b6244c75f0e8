"""Image data for VAEs: MNIST-like sets as tensors, data spaces, batching and input checks.

Images are loaded once through torchvision's dataset classes into a ``uint8`` tensor of
shape ``(N, D)`` and turned into observations for a likelihood by a *data space*:

====================  =============================================================================
``binary-dynamic``    a fresh draw ``x ~ Bernoulli(k / 255)`` every epoch (Burda et al. 2015)
``binary-threshold``  ``x = 1[k / 255 > 0.5]``, the same every epoch
``grey``              ``x = k / 255`` in ``[0, 1]``
``dequantized``       ``x = (k + u) / 256`` with a fresh ``u ~ U(0, 1)`` every epoch, in ``(0, 1)``
``levels``            ``x = floor(k * L / 256)`` in ``{0, ..., L-1}`` (``L = levels``)
``counts``            ``x = k``, the 8-bit values as counts (Poisson/multinomial likelihoods)
====================  =============================================================================

An :class:`ImageData` whose ``space`` is ``None`` lets the model choose: a
:class:`~pyrovae.VAE` trained on it observes the data in its likelihood's space, as the command
line does; elsewhere it is observed as ``binary-dynamic``.

**Several tensors per datapoint.** The trainer and the evaluators take a tensor, a tuple of
tensors that share dim 0 (e.g. ``(x, y)`` for ``model(x, y)``), or a *data source*: any object
with ``tensors(generator, device) -> tuple`` and ``fresh_each_epoch`` (such as
``ImageData.with_labels()``, which gives ``(x, labels)``). All tensors of a batch are shuffled
and sliced together (:func:`minibatches`).

Where the files come from: ``--data-dir``, else the ``PYROVAE_DATA`` environment variable,
else a user cache folder. torchvision downloads missing files when online. The package also
ships a real 10,000-digit MNIST subset (:func:`load_embedded_mnist`) so that demos and tests run
offline.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

import numpy as np
import torch

DATA_ENV = "PYROVAE_DATA"
DEFAULT_SPACE = "binary-dynamic"  # how ImageData without a space is observed by plain pairs
DATA_SPACES = ("binary-dynamic", "binary-threshold", "grey", "dequantized", "levels", "counts")
DATASETS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def heldout_generator(seed: int) -> torch.Generator:
    """The generator that draws a held-out set's observations (binarisation, dequantisation
    noise) once, apart from the training epochs' draws: the same ``seed`` gives the same test
    points in training, evaluation, pictures and comparisons.

    Example:

    >>> import pyrovae
    >>> from pyrovae.data import heldout_generator
    >>> test = pyrovae.load_embedded_mnist().subset(slice(0, 3))
    >>> a = test.observations(heldout_generator(0))
    >>> b = test.observations(heldout_generator(0))
    >>> bool((a == b).all()), a.unique().tolist()
    (True, [0.0, 1.0])
    """
    return torch.Generator().manual_seed(heldout_seed(seed))


def heldout_seed(seed: int) -> int:
    return seed + 7919


class DataError(ValueError):
    """Bad or missing data, reported before any training starts."""


@dataclass(frozen=True)
class ImageData:
    """8-bit images flattened to ``(N, D)`` with optional labels, and how to observe them.

    ``space`` selects the observations a likelihood sees (see the module docstring; ``None``:
    the model's choice); ``levels`` is the number of grey levels for ``space="levels"``;
    ``return_labels`` makes :meth:`tensors` give ``(x, labels)`` instead of ``(x,)``.

    Example:

    >>> import torch
    >>> from pyrovae import ImageData
    >>> data = ImageData(torch.tensor([[0, 128, 255, 64], [255, 255, 0, 0]], dtype=torch.uint8), image_shape=(2, 2))
    >>> len(data), data.data_dim
    (2, 4)
    >>> data.with_space("grey").observations()
    tensor([[0.0000, 0.5020, 1.0000, 0.2510],
            [1.0000, 1.0000, 0.0000, 0.0000]])
    >>> data.with_space("binary-threshold").observations()
    tensor([[0., 1., 1., 0.],
            [1., 1., 0., 0.]])
    >>> data.with_space("levels", levels=4).observations()
    tensor([[0., 2., 3., 1.],
            [3., 3., 0., 0.]])
    """

    images: torch.Tensor  # uint8, (N, D)
    labels: torch.Tensor | None = None  # int64, (N,)
    image_shape: tuple[int, ...] = (28, 28)
    space: str | None = None
    levels: int = 256
    name: str = "data"
    return_labels: bool = False
    # k / 255 as floats, kept: a dynamic binarisation draws against them every epoch, and
    # converting 47M pixels each time was half of the draw (docs/benchmarks.md)
    _grey: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 2:
            raise DataError("ImageData.images must be a uint8 tensor of shape (N, D)")
        if self.space is not None and self.space not in DATA_SPACES:
            raise DataError(f"unknown data space {self.space!r}; choose one of {DATA_SPACES}")
        if self.labels is not None and len(self.labels) != len(self.images):
            raise DataError(f"{len(self.labels)} labels for {len(self.images)} images")
        if self.return_labels and self.labels is None:
            raise DataError(f"{self.name} has no labels to return; pass labels= to from_tensor")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def data_dim(self) -> int:
        return self.images.shape[1]

    @property
    def observed_space(self) -> str:
        """The data space :meth:`observations` uses: ``space``, or ``binary-dynamic`` when unset."""
        return self.space or DEFAULT_SPACE

    @property
    def fresh_each_epoch(self) -> bool:
        """Whether :meth:`observations` draws new random values for each ``generator`` state."""
        return self.observed_space in ("binary-dynamic", "dequantized")

    def with_space(self, space: str | None, levels: int | None = None) -> ImageData:
        return self._same_images(space=space, levels=self.levels if levels is None else levels)

    def with_labels(self, return_labels: bool = True) -> ImageData:
        """The same images whose :meth:`tensors` are ``(x, labels)``, for ``model(x, y)``."""
        return self._same_images(return_labels=return_labels)

    def _same_images(self, **changes) -> ImageData:
        new = replace(self, **changes)
        object.__setattr__(new, "_grey", self._grey)  # the same images: share their grey values
        return new

    def tensors(
        self, generator: torch.Generator | None = None, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, ...]:
        """``(x,)``, or ``(x, labels)`` with :meth:`with_labels`: what ``model(*batch)`` gets."""
        x = self.observations(generator, device)
        if not self.return_labels:
            return (x,)
        return x, self.labels.to(x.device)

    def _grey_values(self, device, dtype: torch.dtype) -> torch.Tensor:
        key = (torch.device(device) if device is not None else self.images.device, dtype)
        if key not in self._grey:
            self._grey.clear()  # one copy: the latest device and dtype
            self._grey[key] = self.images.to(device=key[0], dtype=dtype).div_(255)
        return self._grey[key]

    def subset(self, index: torch.Tensor | slice) -> ImageData:
        labels = None if self.labels is None else self.labels[index]
        return replace(self, images=self.images[index], labels=labels)

    def split(self, num_heldout: int, seed: int = 0) -> tuple[ImageData, ImageData]:
        """A random ``(train, heldout)`` split, the same for the same ``seed``."""
        if not 0 < num_heldout < len(self):
            raise DataError(f"cannot hold out {num_heldout} of {len(self)} images")
        perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        return self.subset(perm[num_heldout:]), self.subset(perm[:num_heldout])

    def observations(
        self,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """The images in this data space as a ``(N, D)`` tensor.

        Random spaces (``binary-dynamic``, ``dequantized``) draw from ``generator``: the same
        generator state gives the same observations, so a held-out set stays fixed when it is
        drawn with a fixed seed.
        """
        gen_device = generator.device if generator is not None else torch.device("cpu")
        space = self.observed_space
        if space == "binary-dynamic":
            grey = self._grey_values(device, dtype)
            u = torch.rand(grey.shape, generator=generator, device=gen_device, dtype=dtype)
            return u.to(grey.device).lt_(grey)  # (u < k / 255) as 0./1., written into u
        k = self.images.to(device=device, dtype=dtype)
        if space == "binary-threshold":
            return (k / 255 > 0.5).to(dtype)
        if space == "grey":
            return k / 255
        if space == "dequantized":
            u = torch.rand(k.shape, generator=generator, device=gen_device, dtype=dtype)
            # kept strictly inside (0, 1): (255 + u)/256 rounds to 1.0 in float32 for u near 1
            half_ulp = torch.finfo(dtype).eps / 2
            return ((k + u.to(k.device)) / 256).clamp_(half_ulp, 1 - half_ulp)
        if space == "counts":
            return k
        return torch.div(k.long() * self.levels, 256, rounding_mode="floor").to(dtype)


def from_tensor(
    images: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray | None = None,
    space: str | None = None,
    name: str = "user data",
) -> ImageData:
    """Wrap a user's images: ``uint8`` in ``0..255`` or floats in ``[0, 1]`` (rounded to 8 bits).

    Images of shape ``(N, H, W)`` or ``(N, C, H, W)`` keep their shape for plots; ``(N, D)``
    is taken as flat.

    Example:

    >>> import torch, pyrovae
    >>> data = pyrovae.from_tensor(torch.rand(5, 28, 28), labels=torch.arange(5))
    >>> len(data), data.image_shape, data.images.dtype
    (5, (28, 28), torch.uint8)
    >>> x, y = data.with_labels().tensors()
    >>> x.shape, y.tolist()
    (torch.Size([5, 784]), [0, 1, 2, 3, 4])
    """
    x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
    if x.dim() < 2:
        raise DataError(f"images must have shape (N, D) or (N, H, W); got {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        x = x.double()
        if not torch.isfinite(x).all():
            raise DataError("images contain NaN or infinite values")
        if x.min() < 0 or x.max() > 1:
            raise DataError(
                f"float images must lie in [0, 1]; got values in [{x.min():.3g}, {x.max():.3g}]"
                " (divide 8-bit images by 255, or pass them as uint8)"
            )
        x = (x * 255).round().to(torch.uint8)
    shape = tuple(x.shape[1:])
    y = None if labels is None else torch.as_tensor(np.asarray(labels)).long()
    return ImageData(x.reshape(len(x), -1), y, shape if len(shape) > 1 else shape, space, name=name)


def default_data_dir() -> Path:
    """``$PYROVAE_DATA`` if set, else ``$XDG_CACHE_HOME/pyrovae`` (``~/.cache/pyrovae``)."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    return _cache_dir()


def _cache_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "pyrovae"


# the sizes of the unpacked idx files, the same for MNIST and Fashion-MNIST
_UNPACKED_SIZES = {"train-images-idx3-ubyte": 47_040_016, "train-labels-idx1-ubyte": 60_008,
                   "t10k-images-idx3-ubyte": 7_840_016, "t10k-labels-idx1-ubyte": 10_008}


def _md5(path: Path, _seen: dict = {}) -> str:  # noqa: B006 -- a cache keyed by size and mtime
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _seen:
        digest = hashlib.md5()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _seen[key] = digest.hexdigest()
    return _seen[key]


def _resources(folder: str) -> dict[str, str]:
    """File name -> MD5 of a dataset's four archives, as torchvision pins them."""
    import torchvision

    return dict(getattr(torchvision.datasets, folder).resources)


def _check_archives(raw: Path, folder: str) -> list[str]:
    """The MD5s of the archives present in ``raw``; a :class:`DataError` names a wrong one
    (truncated, corrupt, or another dataset's file under the same name)."""
    expected = _resources(folder)
    known = {md5: (other, name) for other in DATASETS.values() for name, md5 in _resources(other).items()}
    found = []
    for name, md5 in expected.items():
        path = raw / name
        if not path.exists():
            continue
        if not path.is_file():
            raise DataError(f"{path} is not a file")
        actual = _md5(path)
        if actual != md5:
            other = known.get(actual)
            why = (f"it is {other[0]}'s {other[1]}" if other else
                   f"it is truncated or corrupt ({path.stat().st_size:,} bytes)")
            raise DataError(
                f"{path} has MD5 {actual}, not the {md5} of {folder}'s {name}: {why}. Replace it with the "
                f"original (its MD5 is pinned by torchvision.datasets.{folder}.resources)"
            )
        found.append(actual)
    return found


def _torchvision_root(root: Path, folder: str) -> Path:
    """A root torchvision can use without writing into ``root``.

    torchvision unpacks ``raw/*.gz`` next to the archives and downloads missing ones there.
    Unless ``root`` already holds the unpacked files, link its (MD5-checked) archives into a
    cache mirror named after their checksums, and let torchvision unpack -- or download -- there:
    the user's data folder is never modified, and archives that change get a fresh unpacking.
    """
    raw = root / folder / "raw"
    unpacked = [raw / f[: -len(".gz")] for f in _resources(folder)]
    md5s = _check_archives(raw, folder)
    for path in unpacked:  # unpacked copies in the user's folder: at least their sizes must be right
        size = _UNPACKED_SIZES[path.name]
        if path.exists() and (not path.is_file() or path.stat().st_size != size):
            raise DataError(
                f"{path} is not the unpacked {folder} file it is named after ({size:,} bytes expected); "
                "delete it (pyrovae unpacks the .gz archive into its cache) or replace it"
            )
    if all(p.is_file() for p in unpacked):
        return root
    key = "".join(md5s) if len(md5s) == len(unpacked) else f"incomplete:{root.resolve()}"
    mirror = _cache_dir() / "mirror" / hashlib.sha1(key.encode()).hexdigest()[:12]
    (mirror / folder / "raw").mkdir(parents=True, exist_ok=True)
    for name in _resources(folder):
        archive, link = raw / name, mirror / folder / "raw" / name
        if archive.exists() and not link.exists():
            with contextlib.suppress(FileExistsError):  # another process made it first
                link.symlink_to(archive.resolve())
    return mirror


@contextlib.contextmanager
def _unpack_lock(root: Path):
    """Serialise torchvision's unpacking between processes (e.g. runs started together),
    which otherwise read each other's half-written files. The lock file lives in the cache,
    never in the data folder."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, as torchvision itself
        yield
        return
    lock_dir = _cache_dir() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]
    with open(lock_dir / f"unpack-{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_dataset(
    name: str = "mnist",
    split: str = "train",
    data_dir: str | Path | None = None,
    space: str | None = None,
    download: bool = True,
) -> ImageData:
    """MNIST or Fashion-MNIST (``name``) as :class:`ImageData`, via torchvision.

    ``data_dir`` (else ``$PYROVAE_DATA``, else a cache folder) holds torchvision's layout,
    ``<data_dir>/MNIST/raw/*.gz``; a given folder must exist (it is never created or written
    to). Archives are checked against torchvision's MD5s. Missing files are downloaded into the
    cache when ``download`` is true and the machine is online; otherwise a :class:`DataError`
    names the files it needs.

    Example:

    >>> import pyrovae
    >>> pyrovae.load_dataset("embedded").name
    'mnist-embedded-10k'
    >>> try:
    ...     pyrovae.load_dataset("svhn")
    ... except pyrovae.DataError as err:
    ...     print(err)
    unknown dataset 'svhn'; choose one of ['fashion-mnist', 'mnist'] or 'embedded'
    """
    if name == "embedded":
        return load_embedded_mnist(space=space)
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)} or 'embedded'")
    if split not in _FILES:
        raise DataError(f"split must be 'train' or 'test', not {split!r}")
    import torchvision

    folder = DATASETS[name]
    given = data_dir or os.environ.get(DATA_ENV)
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    if given and not root.is_dir():
        where = "--data-dir" if data_dir else f"${DATA_ENV}"
        raise DataError(
            f"{where} {root} {'is not a folder' if root.exists() else 'does not exist'}; point --data-dir or "
            f"${DATA_ENV} at a folder that holds {folder}/raw/*.gz (torchvision's layout), or leave both unset "
            "to use (and download into) the cache"
        )
    cls = getattr(torchvision.datasets, folder)
    tv_root = _torchvision_root(root, folder)
    try:
        # torchvision prints each failed mirror; the error below says all that matters.
        with _unpack_lock(tv_root), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            ds = cls(str(tv_root), train=split == "train", download=download)
    except Exception as err:  # torchvision raises RuntimeError/URLError/OSError here
        raw = root / folder / "raw"
        needed = ", ".join(f for f in _resources(folder) if not (raw / f).exists()) or ", ".join(_resources(folder))
        raise DataError(
            f"{folder} {split} files not found under {root / folder / 'raw'} and could not be "
            f"downloaded ({type(err).__name__}: {err}).\n"
            f"Put {needed} there (torchvision's layout), or point --data-dir or the "
            f"{DATA_ENV} environment variable at a folder that holds {folder}/raw/. "
            "Without any files, `--dataset embedded` uses the 10,000 MNIST digits shipped "
            "with pyrovae."
        ) from None
    images = ds.data.reshape(len(ds.data), -1).to(torch.uint8)
    return ImageData(images, ds.targets.long(), (28, 28), space, name=f"{name}-{split}")


def _read_idx_gz(path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_train_test(
    name: str = "embedded", data_dir: str | Path | None = None, test_size: int | None = None,
    train_size: int | None = None,
) -> tuple[ImageData, ImageData]:
    """Training and test images: the ``mnist``/``fashion-mnist`` splits (test cut to its first
    ``test_size``), or the embedded digits split ``test_size`` (default 1000) / the rest; the
    training images cut to their first ``train_size`` when it is given.

    Example:

    >>> import pyrovae
    >>> train, test = pyrovae.load_train_test("embedded", test_size=100, train_size=500)
    >>> len(train), len(test), train.image_shape
    (500, 100, (28, 28))
    """
    if name == "embedded":
        train, test = load_embedded_mnist().split(test_size or 1000)
    else:
        test = load_dataset(name, "test", data_dir)
        train, test = load_dataset(name, "train", data_dir), test.subset(slice(0, test_size)) if test_size else test
    return (train.subset(slice(0, train_size)) if train_size else train), test


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_data_arguments(parser: argparse.ArgumentParser, test_size: int | None = None) -> None:
    """The data flags that every script of ``examples/`` shares, read by :func:`load_train_test`:
    ``--dataset``, ``--data-dir``, ``--train-size`` (the first N training images: small runs,
    such as the docs' gallery) and ``--test-size`` (default ``test_size``).

    Example:

    >>> import argparse
    >>> from pyrovae.data import add_data_arguments
    >>> parser = argparse.ArgumentParser()
    >>> add_data_arguments(parser, test_size=1000)
    >>> args = parser.parse_args(["--train-size", "500"])
    >>> args.dataset, args.train_size, args.test_size
    ('embedded', 500, 1000)
    """
    parser.add_argument("--dataset", default="embedded", choices=["embedded", *DATASETS])
    parser.add_argument("--data-dir", default=None, help=f"torchvision layout; default ${DATA_ENV}")
    parser.add_argument("--train-size", type=_positive_int, default=None,
                        help="use only the first N training images")
    parser.add_argument("--test-size", type=_positive_int, default=test_size,
                        help="test images: the first N of the test split (embedded: N split off, default 1000)")


def load_embedded_mnist(space: str | None = None) -> ImageData:
    """The first 10,000 MNIST training digits, shipped with pyrovae (see ``_embedded/README``).

    Example:

    >>> import pyrovae
    >>> digits = pyrovae.load_embedded_mnist()
    >>> len(digits), digits.image_shape, digits.labels[:8].tolist()
    (10000, (28, 28), [5, 0, 4, 1, 9, 2, 1, 3])
    >>> train, heldout = digits.split(1000)
    >>> len(train), len(heldout)
    (9000, 1000)
    """
    pkg = resources.files("pyrovae") / "_embedded"
    with resources.as_file(pkg / "mnist-train-10k-images-idx3-ubyte.gz") as p:
        images = _read_idx_gz(p)
    with resources.as_file(pkg / "mnist-train-10k-labels-idx1-ubyte.gz") as p:
        labels = _read_idx_gz(p)
    return ImageData(
        torch.from_numpy(images.reshape(len(images), -1).copy()),
        torch.from_numpy(labels.astype(np.int64)),
        (28, 28),
        space,
        name="mnist-embedded-10k",
    )


def as_tensors(
    data, generator: torch.Generator | None = None, device: torch.device | str | None = None,
    what: str = "data",
) -> tuple[torch.Tensor, ...]:
    """The per-datapoint tensors of ``data``: a tensor, a tuple of tensors sharing dim 0, or a
    data source with ``tensors(generator, device)`` (e.g. :class:`ImageData`).

    Example:

    >>> import torch, pyrovae
    >>> from pyrovae.data import as_tensors
    >>> [t.shape for t in as_tensors((torch.zeros(3, 4), torch.arange(3)))]
    [torch.Size([3, 4]), torch.Size([3])]
    >>> digits = pyrovae.load_embedded_mnist().subset(slice(0, 2))
    >>> [t.shape for t in as_tensors(digits.with_labels())]
    [torch.Size([2, 784]), torch.Size([2])]
    """
    if hasattr(data, "tensors"):
        tensors = tuple(data.tensors(generator, device))
    elif torch.is_tensor(data):
        tensors = (data,)
    elif isinstance(data, (tuple, list)) and data and all(torch.is_tensor(t) for t in data):
        tensors = tuple(data)
    else:
        raise DataError(
            f"{what} must be a torch.Tensor, a tuple of tensors sharing dim 0 (one row per "
            f"datapoint), or an ImageData; got {_describe_value(data)} (convert numbers with torch.as_tensor)"
        )
    check_batch(tensors, what)
    if device is not None:
        tensors = tuple(t.to(device) for t in tensors)
    return tensors


def as_float_tensor(x, dtype: torch.dtype = torch.float32):
    """``x`` as a floating tensor of ``dtype`` where the meaning is clear -- bool (0/1), integers
    (counts, levels, 0/1), other float precisions, numpy arrays -- and anything else unchanged
    (a tuple, a data source) or refused (complex numbers, strings) with the fix."""
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "biuf":
            raise DataError(f"data of numpy dtype {x.dtype} cannot be observations; pass numbers")
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not torch.is_tensor(x):
        return x
    if x.is_complex():
        raise DataError(f"data of dtype {x.dtype} cannot be observations; pass real numbers (x.real or x.abs())")
    return x if x.dtype == dtype else x.to(dtype)


def _describe_value(data) -> str:
    if isinstance(data, (tuple, list)) and data:
        return f"a {type(data).__name__} of {type(data[0]).__name__}"
    return f"a {type(data).__name__}"


def check_batch(tensors: Sequence[torch.Tensor], what: str = "data") -> None:
    """Tensors with one row per datapoint: the same dim 0, not empty, finite; raises :class:`DataError`."""
    for i, t in enumerate(tensors):
        if not torch.is_tensor(t):
            raise DataError(f"{what}: item {i} of the batch is a {type(t).__name__}, not a torch.Tensor")
        if t.dim() == 0:
            raise DataError(f"{what}: item {i} of the batch is a scalar; every tensor needs one row per datapoint")
    sizes = [t.shape[0] for t in tensors]
    if len(set(sizes)) > 1:
        raise DataError(
            f"{what}: the batch's tensors must share dim 0 (one row per datapoint), but their first "
            f"dims are {sizes}; pass other arguments to the model by keyword or closure"
        )
    if sizes[0] == 0:
        raise DataError(f"{what} is empty")
    for i, t in enumerate(tensors):
        # a finite sum means finite values (a NaN or inf makes it non-finite): one pass without a
        # mask the size of the data; a sum that overflows is checked value by value
        if t.is_floating_point() and not torch.isfinite(t.sum()) and not torch.isfinite(t).all():
            bad = (~torch.isfinite(t)).reshape(len(t), -1).any(1).nonzero()[:5, 0].tolist()
            where = f"item {i} of the batch, " if len(tensors) > 1 else ""
            raise DataError(f"{what} contains NaN or infinite values ({where}rows {bad}...)")


def minibatches(
    data: torch.Tensor | Sequence[torch.Tensor],
    batch_size: int,
    generator: torch.Generator | None = None,
    shuffle: bool = True,
) -> Iterator:
    """Minibatches of rows, all tensors of a tuple shuffled and sliced together (one shuffle
    per call). A tensor gives tensors, a tuple gives tuples.

    Example:

    >>> import torch
    >>> from pyrovae.data import minibatches
    >>> x, y = torch.arange(10.0).unsqueeze(-1), torch.arange(10)
    >>> batches = list(minibatches((x, y), batch_size=4, generator=torch.Generator().manual_seed(0)))
    >>> [len(by) for bx, by in batches]
    [4, 4, 2]
    >>> all(torch.equal(bx[:, 0].long(), by) for bx, by in batches)
    True
    """
    single = torch.is_tensor(data)
    tensors = (data,) if single else tuple(data)
    n = tensors[0].shape[0]
    if shuffle:
        order = torch.randperm(n, generator=generator).to(tensors[0].device)
        parts = (tuple(t[idx] for t in tensors) for idx in order.split(batch_size))
    else:
        parts = zip(*(t.split(batch_size) for t in tensors))
    for part in parts:
        yield part[0] if single else part


def check_observations(x: torch.Tensor, data_dim: int | None = None, what: str = "data") -> None:
    """Observations of shape ``(N, D)`` (``D = data_dim`` when given), then the rows checks of
    :func:`check_batch` (not empty, finite); raises :class:`DataError`.

    Example:

    >>> import torch, pyrovae
    >>> from pyrovae.data import check_observations
    >>> check_observations(torch.zeros(2, 4), data_dim=4)
    >>> try:
    ...     check_observations(torch.zeros(2, 3), data_dim=4)
    ... except pyrovae.DataError:
    ...     print("refused")
    refused
    """
    if not torch.is_tensor(x):
        raise DataError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        hint = " (flatten images with x.reshape(len(x), -1))" if x.dim() > 2 else ""
        raise DataError(f"{what} must have shape (N, D); got {tuple(x.shape)}{hint}")
    if data_dim is not None and x.shape[1] != data_dim:
        raise DataError(f"{what} has {x.shape[1]} values per row but the model expects {data_dim}")
    check_batch((x,), what)


def check_labels(y: torch.Tensor, num_classes: int, what: str = "data") -> None:
    """Class indices of shape ``(N,)`` in ``0 .. num_classes - 1``; raises :class:`DataError`."""
    if not torch.is_tensor(y) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        kind = y.dtype if torch.is_tensor(y) else type(y).__name__
        raise DataError(f"{what}: labels must be an integer tensor of class indices (int64), not {kind}")
    if y.dim() != 1:
        hint = "; for one-hot labels use y.argmax(-1)" if y.dim() == 2 and y.shape[1] == num_classes else ""
        raise DataError(f"{what}: labels must have shape (N,), one class index per image; got {tuple(y.shape)}{hint}")
    check_batch((y,), what)
    if y.min() < 0 or y.max() >= num_classes:
        raise DataError(
            f"{what}: labels must lie in 0..{num_classes - 1}, but they range over [{int(y.min())}, {int(y.max())}]; "
            "give every image its class (an unlabelled image's label is never observed: any class will do), or "
            "set the model's number of classes"
        )


BINARY_SPACES = ("binary-dynamic", "binary-threshold")


def in_spaces(data: ImageData, spaces: Sequence[str], model: str, scores: str = "scores binarised digits") -> ImageData:
    """``data`` in the first of ``spaces`` when it has no space, as it is when its space is one of
    them; otherwise a :class:`DataError` that names the spaces ``model`` takes."""
    if data.space is None:
        return data.with_space(spaces[0])
    if data.space not in spaces:
        raise DataError(
            f"the {model} model {scores}, but {data.name} is in space {data.space!r}; use "
            f"{' or '.join(f'--data-space {s}' for s in spaces)} (data.with_space({spaces[0]!r})), or an ImageData "
            "without a space"
        )
    return data
