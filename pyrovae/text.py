r"""Text data for sentence VAEs: a vocabulary, sentences as padded token tensors, batches by length.

A corpus is a list of sentences, one per line, of space-separated tokens (Mikolov's Penn Treebank:
10,000 word types, rare words as ``<unk>``, numbers as ``N``). A sentence
:math:`x = (x_1, \dots, x_T)` is stored as the word ids :math:`x_1, \dots, x_{T-1}` followed by
``<eos>``, so :math:`T` counts the ``<eos>`` (the convention of Mikolov et al. 2010 and Bowman et
al. 2016 for per-word perplexity), then right-padded with ``<pad>`` to the longest sentence:

=========  ====  =================================================================================
``<pad>``  0     padding; never scored (the model masks it out of :math:`\log p(x)`)
``<bos>``  1     the decoder's first input; never scored
``<eos>``  2     the last token of every sentence; scored like a word
words      3...  by decreasing training frequency (ties alphabetically)
=========  ====  =================================================================================

:class:`TextData` holds a ``(N, L)`` ``int64`` tensor of these ids with its :class:`Vocabulary`.
The trainer and the importance sampler see one tensor per batch, ``x`` (``model(x)``,
``guide(x)``); the lengths are ``(x != 0).sum(-1)``. :meth:`TextData.minibatches` batches by
length (bucketing: sentences of similar length together, the batches in random order), so a batch
is padded little.

Where the files come from: ``--data-dir``, else ``$PYROVAE_DATA``, else the user cache folder
(:func:`pyrovae.data.default_data_dir`), in the layout ``<data_dir>/PTB/ptb.{train,valid,test}.txt``
(or ``.txt.gz``); each file is checked against the MD5 of the uncompressed text that torchtext
pins. Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .data import DATA_ENV, DataError, default_data_dir

PAD, BOS, EOS = 0, 1, 2
SPECIALS = ("<pad>", "<bos>", "<eos>")
UNK_WORD = "<unk>"
TEXT_DATASETS = {"ptb": "PTB"}
TEXT_SPLITS = ("train", "valid", "test")
# MD5 of the uncompressed files (torchtext's pins; /work/shared/data/SOURCES.md), and their sentences
PTB_MD5 = {
    "train": "f26c4b92c5fdc7b3f8c7cdcb991d8420",
    "valid": "aa0affc06ff7c36e977d7cd49e3839bf",
    "test": "8b80168b89c18661a38ef683c0dc3721",
}
PTB_LINES = {"train": 42068, "valid": 3370, "test": 3761}


@dataclass(frozen=True)
class Vocabulary:
    """Token strings by id: the three specials (``<pad>``, ``<bos>``, ``<eos>``), then the words."""

    words: tuple[str, ...]

    def __post_init__(self) -> None:
        if tuple(self.words[:3]) != SPECIALS:
            raise DataError(f"a vocabulary starts with {SPECIALS}, not {tuple(self.words[:3])}")
        if len(set(self.words)) != len(self.words):
            raise DataError("a vocabulary lists every token once")

    @classmethod
    def from_sentences(cls, sentences: Sequence[Sequence[str]]) -> Vocabulary:
        """The specials, then every token of ``sentences`` by decreasing count (ties alphabetically)."""
        counts = Counter(w for s in sentences for w in s)
        bad = sorted(set(SPECIALS) & set(counts))
        if bad:
            raise DataError(f"the sentences contain the reserved tokens {bad}; remove them (<eos> is added)")
        return cls(SPECIALS + tuple(sorted(counts, key=lambda w: (-counts[w], w))))

    def __len__(self) -> int:
        return len(self.words)

    @property
    def index(self) -> dict[str, int]:
        return _index(self)

    @property
    def unk(self) -> int | None:
        """The id of ``<unk>`` (word dropout's replacement), or ``None`` without one."""
        return self.index.get(UNK_WORD)

    def encode(self, sentence: Sequence[str] | str, what: str = "sentence") -> list[int]:
        """Ids of the words of ``sentence`` (a string is split on spaces), then ``<eos>``; unknown
        words become ``<unk>`` where the vocabulary has it, else a :class:`DataError`."""
        words = sentence.split() if isinstance(sentence, str) else list(sentence)
        index, unk = self.index, self.unk
        ids = [index.get(w, unk) for w in words]
        if None in ids:
            missing = sorted({w for w, i in zip(words, ids) if i is None})[:5]
            raise DataError(f"{what} has words outside the vocabulary and it has no {UNK_WORD}: {missing}")
        return [*ids, EOS]

    def decode(self, ids: Sequence[int] | torch.Tensor, stop: bool = True) -> str:
        """The words of ``ids``, up to (without) the first ``<eos>`` when ``stop``; padding and
        ``<bos>`` are skipped."""
        out = []
        for i in (ids.tolist() if torch.is_tensor(ids) else ids):
            if i == EOS and stop:
                break
            if i in (PAD, BOS):
                continue
            out.append(self.words[i])
        return " ".join(out)


_INDEXES: dict[int, dict[str, int]] = {}


def _index(vocab: Vocabulary) -> dict[str, int]:
    key = id(vocab.words)
    if key not in _INDEXES:
        _INDEXES[key] = {w: i for i, w in enumerate(vocab.words)}
    return _INDEXES[key]


def sentence_lengths(x: torch.Tensor) -> torch.Tensor:
    """Tokens per sentence, ``<eos>`` included: the ids that are not ``<pad>``."""
    return (x != PAD).sum(-1)


def pad_sentences(ids: Sequence[Sequence[int]], length: int | None = None) -> torch.Tensor:
    """Id lists right-padded with ``<pad>`` into an ``(N, length)`` ``int64`` tensor (default: the longest)."""
    longest = max((len(s) for s in ids), default=0)
    length = longest if length is None else length
    if length < longest:
        raise DataError(f"cannot pad sentences of up to {longest} tokens to {length}")
    x = torch.full((len(ids), length), PAD, dtype=torch.long)
    for i, s in enumerate(ids):
        x[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return x


@dataclass(frozen=True)
class TextData:
    """Sentences as an ``(N, L)`` ``int64`` tensor of token ids (``<eos>``-terminated, ``<pad>``-padded),
    with their :class:`Vocabulary`; a data source for :class:`~pyrovae.infer.Trainer` (``tensors``,
    ``minibatches``) and the run machinery (``data_dim``: the vocabulary's size)."""

    tokens: torch.Tensor
    vocab: Vocabulary
    name: str = "text"
    labels = None  # the run machinery asks every data source for labels
    space = None
    levels = 256
    fresh_each_epoch = False

    def __post_init__(self) -> None:
        x = self.tokens
        if not torch.is_tensor(x) or x.dtype != torch.long or x.dim() != 2:
            raise DataError("TextData.tokens must be an int64 tensor of shape (N, L); build it with pad_sentences")
        check_tokens(x, len(self.vocab), self.name)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def data_dim(self) -> int:
        """The vocabulary's size V: what a one-hot token has, and what text models are sized by."""
        return len(self.vocab)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return (len(self.vocab),)

    @property
    def lengths(self) -> torch.Tensor:
        return sentence_lengths(self.tokens)

    @property
    def num_tokens(self) -> int:
        """Tokens scored, ``<eos>`` included (the denominator of per-word perplexity)."""
        return int(self.lengths.sum())

    def with_space(self, space: str | None, levels: int | None = None) -> TextData:
        if space not in (None, "tokens"):
            raise DataError(f"{self.name} is text: data spaces are for images; leave --data-space unset")
        return self

    def tensors(self, generator: torch.Generator | None = None, device=None) -> tuple[torch.Tensor]:
        """``(x,)``, trimmed to the longest sentence."""
        x = self.tokens[:, : max(int(self.lengths.max()), 1)]
        return (x if device is None else x.to(device),)

    def subset(self, index: torch.Tensor | slice) -> TextData:
        x = self.tokens[index]
        return replace(self, tokens=x[:, : max(int(sentence_lengths(x).max()), 1)])

    def sample(self, num: int, seed: int) -> TextData:
        """``num`` sentences drawn without replacement with ``seed`` (in their corpus order)."""
        if not 0 < num <= len(self):
            raise DataError(f"cannot draw {num} of {len(self)} sentences")
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:num].sort().values
        return self.subset(idx)

    def sentences(self) -> list[str]:
        return [self.vocab.decode(row) for row in self.tokens]

    @staticmethod
    def minibatches(
        data: Sequence[torch.Tensor], batch_size: int, generator: torch.Generator | None = None,
        shuffle: bool = True,
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        """Batches of sentences of similar length (bucketing), each trimmed to its longest
        sentence: the rows sorted by length (ties in random order), cut into batches of
        ``batch_size``, the batches in random order. Every row is in exactly one batch."""
        return bucket_minibatches(data, batch_size, generator, shuffle)


def bucket_minibatches(
    data: Sequence[torch.Tensor] | torch.Tensor, batch_size: int, generator: torch.Generator | None = None,
    shuffle: bool = True,
) -> Iterator[tuple[torch.Tensor, ...]]:
    """:meth:`TextData.minibatches` for a tensor of token ids (or a tuple whose first one is)."""
    tensors = (data,) if torch.is_tensor(data) else tuple(data)
    x = tensors[0]
    lengths = sentence_lengths(x).cpu()
    n = len(lengths)
    if shuffle:
        ties = torch.rand(n, generator=generator, dtype=torch.float64)
        order = torch.argsort(lengths.double() + 0.5 * ties)
        batches = list(order.split(batch_size))
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    else:
        batches = list(torch.arange(n).split(batch_size))
    for idx in batches:
        idx = idx.to(x.device)
        longest = max(int(lengths[idx.cpu()].max()), 1)
        yield tuple(t[idx][:, :longest] if t is x else t[idx] for t in tensors)


def check_tokens(x: torch.Tensor, vocab_size: int, what: str = "data") -> None:
    """Token ids of shape ``(N, L)``, ``int64``, each row some ids in ``3..V-1`` then one ``<eos>``
    then only ``<pad>``; raises :class:`DataError` with the fix."""
    if not torch.is_tensor(x) or x.dtype != torch.long:
        kind = x.dtype if torch.is_tensor(x) else type(x).__name__
        raise DataError(f"{what}: sentences must be an int64 tensor of token ids, not {kind} (see pyrovae.text)")
    if x.dim() != 2:
        raise DataError(f"{what}: sentences must have shape (N, L), one padded row per sentence; got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise DataError(f"{what} is empty")
    if x.numel() and (x.min() < 0 or x.max() >= vocab_size):
        raise DataError(
            f"{what}: token ids must lie in 0..{vocab_size - 1} (the vocabulary's size is {vocab_size}), "
            f"but they range over [{int(x.min())}, {int(x.max())}]; encode with the model's vocabulary"
        )
    lengths = sentence_lengths(x)
    positions = torch.arange(x.shape[1], device=x.device)
    inside = positions < lengths[:, None]
    last = x.gather(1, (lengths - 1).clamp_min(0)[:, None])[:, 0]
    bad = (lengths == 0) | (inside != (x != PAD)).any(1) | (last != EOS) \
        | ((x == EOS) & inside).sum(1).ne(1) | ((x == BOS) & inside).any(1)
    if bad.any():
        rows = bad.nonzero()[:5, 0].tolist()
        raise DataError(
            f"{what}: rows {rows} are not sentences: each row must be word ids, one <eos> ({EOS}) at the end, then "
            f"only <pad> ({PAD}), and no <bos> ({BOS}); build them with Vocabulary.encode and pad_sentences"
        )


# --------------------------------------------------------------------------- files


def read_sentences(path: str | Path) -> list[list[str]]:
    """The space-separated tokens of each non-empty line of a text file (``.gz`` read as gzip)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [line.split() for line in f if line.strip()]


def _md5_text(path: Path, _seen: dict = {}) -> str:  # noqa: B006 -- a cache keyed by size and mtime
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _seen:
        _seen[key] = _md5_uncached(path)
    return _seen[key]


def _md5_uncached(path: Path) -> str:
    digest = hashlib.md5()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _ptb_file(root: Path, split: str) -> Path:
    folder = root / TEXT_DATASETS["ptb"]
    for name in (f"ptb.{split}.txt", f"ptb.{split}.txt.gz"):
        if (folder / name).is_file():
            path = folder / name
            md5 = _md5_text(path)
            if md5 != PTB_MD5[split]:
                raise DataError(
                    f"{path} has (uncompressed) MD5 {md5}, not the {PTB_MD5[split]} of Mikolov's ptb.{split}.txt: "
                    "it is truncated, corrupt or another preprocessing; replace it with the original "
                    "(simple-examples/data/ptb.*.txt of the RNNLM toolkit)"
                )
            return path
    raise DataError(
        f"Penn Treebank {split} file not found: {folder}/ptb.{split}.txt(.gz) does not exist. Put Mikolov's "
        f"ptb.train.txt, ptb.valid.txt and ptb.test.txt (from the RNNLM toolkit's simple-examples/data, plain or "
        f"gzipped) in {folder}, or point --data-dir or the {DATA_ENV} environment variable at a folder that holds "
        "PTB/; pyrovae does not download them"
    )


_CORPUS_CACHE: dict[tuple, tuple[Vocabulary, dict[str, list[list[str]]]]] = {}


def load_text(
    name: str = "ptb", split: str = "train", data_dir: str | Path | None = None, max_length: int | None = None,
) -> TextData:
    """A split (``train``, ``valid``, ``test``) of a text corpus as :class:`TextData`, with the
    vocabulary of its training split (Mikolov's PTB: 9,999 word types, ``<unk>`` among them; with
    the specials V = 10,002 ids, of which 10,000 are scored: the words and ``<eos>``).

    ``data_dir`` (else ``$PYROVAE_DATA``, else the cache folder) holds ``PTB/ptb.<split>.txt[.gz]``;
    ``max_length`` keeps only sentences of at most that many tokens (``<eos>`` included).
    """
    if name not in TEXT_DATASETS:
        raise DataError(f"unknown text dataset {name!r}; choose one of {sorted(TEXT_DATASETS)}")
    if split not in TEXT_SPLITS:
        raise DataError(f"split must be one of {TEXT_SPLITS}, not {split!r}")
    given = data_dir or os.environ.get(DATA_ENV)
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    if given and not root.is_dir():
        where = "--data-dir" if data_dir else f"${DATA_ENV}"
        raise DataError(
            f"{where} {root} {'is not a folder' if root.exists() else 'does not exist'}; point --data-dir or "
            f"${DATA_ENV} at a folder that holds PTB/ptb.{{train,valid,test}}.txt(.gz)"
        )
    key = (name, str(root.resolve()))
    if key not in _CORPUS_CACHE:
        train_path = _ptb_file(root, "train")
        train = read_sentences(train_path)
        _CORPUS_CACHE[key] = (Vocabulary.from_sentences(train), {"train": train})
    vocab, splits = _CORPUS_CACHE[key]
    if split not in splits:
        splits[split] = read_sentences(_ptb_file(root, split))
    ids = [vocab.encode(s, f"{name} {split}") for s in splits[split]]
    if max_length is not None:
        ids = [s for s in ids if len(s) <= max_length]
    return TextData(pad_sentences(ids), vocab, f"{name}-{split}")


def from_sentences(sentences: Sequence[str], vocab: Vocabulary | None = None, name: str = "user text") -> TextData:
    """Sentences (strings of space-separated words) as :class:`TextData`, with ``vocab`` or one built from them."""
    split = [s.split() for s in sentences]
    vocab = vocab or Vocabulary.from_sentences(split)
    return TextData(pad_sentences([vocab.encode(s, name) for s in split]), vocab, name)


def perplexity(total_nll: float, num_tokens: int) -> float:
    """Per-word perplexity :math:`\\exp(\\sum_i -\\log p(x_i) / \\sum_i T_i)`, tokens counted with ``<eos>``."""
    return math.exp(total_nll / num_tokens)
