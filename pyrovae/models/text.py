r"""Sentence VAEs (Bowman et al. 2016) and the LSTM language model they are compared with.

Data: a batch ``x`` of ``N`` sentences as token ids, ``<eos>``-terminated and ``<pad>``-padded
(:mod:`pyrovae.text`); sentence :math:`i` has :math:`T_i` scored tokens :math:`x_{i1}, \dots, x_{iT_i}`
(the last is ``<eos>``).

Generative model (``TextVAE.model``), for each sentence in the ``data`` plate:

.. math::

    z_i \sim \mathcal N(0, I_d), \qquad
    x_{it} \mid x_{i,<t}, z_i \sim \operatorname{Categorical}\big(\operatorname{softmax}(W h_{it} + b)\big),
    \quad t = 1, \dots, T_i,

where :math:`h_{it}` is the state of an LSTM decoder started at :math:`h_{i0} = \tanh(A z_i + a)`
and fed :math:`[e(x_{i,t-1}); z_i]` (:math:`x_{i0}` = ``<bos>``, :math:`e` a word embedding); the
softmax runs over the words and ``<eos>`` (``<pad>`` and ``<bos>`` are never emitted). A sentence's
length is part of what is modelled: ``<eos>`` is a token like any other, so

.. math::

    \log p(x_i \mid z_i) = \sum_{t=1}^{T_i} \log p(x_{it} \mid x_{i,<t}, z_i),

and padding positions :math:`t > T_i` are masked out of the observed site (``Categorical(...).mask(x != <pad>)``):
they contribute nothing to :math:`\log p(x)`, to the ELBO or to an importance weight.

Guide (``TextVAE.guide``): an LSTM encoder reads :math:`x_{i1..T_i}`; its state after the last real
token gives :math:`q_\phi(z_i \mid x_i) = \mathcal N(\mu_\phi(x_i), \operatorname{diag}\sigma^2_\phi(x_i))`.

``latent_dim=0`` (registered as ``text-lm``) drops :math:`z`: the same decoder is then a plain LSTM
language model :math:`p(x_i) = \prod_t p(x_{it} \mid x_{i,<t})`, whose :math:`\log p(x)` is exact
(the guide is empty and every importance weight equals it).

**Word dropout** (Bowman et al. 2016, ``word_dropout=p``): while training, each decoder *input*
word is replaced by ``<unk>`` with probability :math:`p`, so the decoder must lean on :math:`z`.
It is a training-time corruption, not part of the model: it is applied only when the module is in
training mode *and* gradients are being taken, so held-out bounds and importance sampling
(computed under ``torch.no_grad``) score the uncorrupted :math:`p(x \mid z)`.

**Bag of words** (:class:`BagOfWordsVAE`, ``text-bow``, Aziz's slides): the same sentences as
unordered bags, :math:`c_i \mid z_i \sim \operatorname{Multinomial}(T_i, \operatorname{softmax}(f_\theta(z_i)))`
over the words and ``<eos>`` (:math:`T_i` given), so
:math:`\log p(c_i \mid z_i) = \log T_i! - \sum_v \log c_{iv}! + \sum_v c_{iv} \log \pi_v(z_i)`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions.torch_distribution import TorchDistribution
from torch import nn
from torch.distributions import constraints

from ..text import BOS, EOS, PAD, TextData, Vocabulary, check_tokens, sentence_lengths

TEXT_OUTPUTS = ("samples.txt", "reconstructions.txt", "homotopies.txt")


def _width(hidden: Sequence[int] | int) -> tuple[int, int]:
    """(width, layers) from ``hidden``: one LSTM layer per entry, all of the same width."""
    widths = [hidden] if isinstance(hidden, int) else list(hidden)
    if not widths or len(set(widths)) != 1 or widths[0] < 1:
        raise ValueError(f"hidden must be one width per LSTM layer, all the same (e.g. (256,)), not {hidden!r}")
    return widths[0], len(widths)


class _TextModel(nn.Module):
    """What the text models share: data checks, vocabulary handling, the run's text outputs."""

    data_space = "tokens"
    training_defaults = {"jit": False}  # batch shapes vary with sentence length: no traced loss
    vocab: Vocabulary | None = None

    def prepare_data(self, data, heldout: bool = False):
        """:class:`~pyrovae.text.TextData` as it is (remembering its vocabulary for decoding);
        a tensor of token ids as it is; anything else refused with the fix."""
        if isinstance(data, TextData):
            if len(data.vocab) != self.data_dim:
                raise _data_error(f"{data.name} has a vocabulary of {len(data.vocab)} ids but the model was built "
                                  f"for {self.data_dim}; build it with data_dim=len(data.vocab)")
            self.vocab = data.vocab
            return data
        if torch.is_tensor(data) and data.dtype == torch.long:
            return data
        raise _data_error(
            f"text models take TextData or an int64 tensor of token ids, not {_describe(data)}; load sentences "
            "with pyrovae.text.load_text or pyrovae.text.from_sentences"
        )

    def check_data(self, x: torch.Tensor, what: str = "data") -> None:
        """Token ids of shape ``(N, L)``: words, one ``<eos>``, then padding (:func:`pyrovae.text.check_tokens`)."""
        check_tokens(x, self.data_dim, what)

    def to_picture(self, values: torch.Tensor) -> torch.Tensor:
        return values

    # importance sampling holds a (particles x sentences x length x V) softmax: 64 sentence-particles per pass
    evaluation_chunk_size = 64
    # each pass cuts its sentences to the longest one (Python control flow on the data), which a jit trace
    # would freeze: importance sampling stays eager
    evaluation_jit = False

    @torch.no_grad()
    def evaluation_summary(self, res, x: torch.Tensor) -> dict[str, Any]:
        """Text figures of an importance-sampling result on sentences ``x``: see :func:`text_scores`."""
        kl = self.heldout_metrics(x).get("heldout_kl", 0.0)
        scores = text_scores(res, x)
        # for text a "dimension" is a token (<eos> counted): bits per token, not per vocabulary entry
        bits = scores["nll_per_sentence"] * scores["num_sentences"] / (scores["num_tokens"] * math.log(2))
        return {**scores, "kl_per_sentence": kl, "bits_per_dim": bits,
                "bits_per_dim_means": "bits per token, <eos> counted"}

    def sample_text(self, num: int, sample: bool = False, seed: int = 0) -> list[str]:
        """``num`` lines of text from the model with z ~ p(z) drawn with ``seed`` (``pyrovae sample``)."""
        self.eval()
        gen = torch.Generator(device=next(self.parameters()).device).manual_seed(seed)
        return self._sample_lines(num, sample, gen)

    def _words(self, ids: torch.Tensor) -> list[str]:
        if self.vocab is None:
            return [" ".join(str(i) for i in row.tolist()) for row in ids]
        return [self.vocab.decode(row) for row in ids]


def _data_error(message: str):
    from ..data import DataError

    return DataError(message)


def _describe(data) -> str:
    if torch.is_tensor(data):
        return f"a {data.dtype} tensor"
    return f"a {type(data).__name__}"


class TextVAE(_TextModel):
    """A sentence VAE (LSTM encoder and decoder) whose ``model(x)`` and ``guide(x)`` are Pyro functions.

    :param data_dim: the vocabulary's size V, specials included (10,002 for PTB); the decoder's
        softmax has V - 2 outputs (the words and ``<eos>``).
    :param latent_dim: dimension ``d`` of ``z``; 0 gives the LSTM language model (no ``z``, no guide).
    :param hidden: LSTM width, one entry per layer (all equal).
    :param embed_dim: word-embedding width (one embedding shared by encoder and decoder).
    :param word_dropout: probability of replacing a decoder input word by ``<unk>`` while training.
    :param name: prefix of the parameter names in Pyro's param store.
    """

    def __init__(
        self,
        data_dim: int = 10002,
        latent_dim: int = 32,
        hidden: Sequence[int] = (256,),
        embed_dim: int = 256,
        word_dropout: float = 0.0,
        name: str = "textvae",
    ) -> None:
        super().__init__()
        if data_dim < 4:
            raise ValueError(f"data_dim is the vocabulary's size, specials included (at least 4), not {data_dim}")
        if latent_dim < 0:
            raise ValueError(f"latent_dim must be >= 0 (0: a language model), not {latent_dim}")
        if not 0 <= word_dropout < 1:
            raise ValueError(f"word_dropout is a probability in [0, 1), not {word_dropout}")
        width, layers = _width(hidden)
        self.data_dim, self.latent_dim, self.name = data_dim, latent_dim, name
        self.width, self.layers, self.word_dropout = width, layers, word_dropout
        self.embed = nn.Embedding(data_dim, embed_dim, padding_idx=PAD)
        self.decoder = nn.ModuleDict({
            "rnn": nn.LSTM(embed_dim + latent_dim, width, layers, batch_first=True),
            "out": nn.Linear(width, data_dim - 2),
        })
        if latent_dim:
            self.decoder["init"] = nn.Linear(latent_dim, width * layers)
            self.encoder = nn.ModuleDict({
                "rnn": nn.LSTM(embed_dim, width, layers, batch_first=True),
                "q": nn.Linear(width, 2 * latent_dim),
            })

    # ------------------------------------------------------------------ the generative story

    def model(self, x: torch.Tensor) -> None:
        """p(z) p(x|z) for the sentences ``x`` (``(N, L)`` token ids), padding masked out."""
        pyro.module(f"{self.name}.embed", self.embed)
        pyro.module(f"{self.name}.decoder", self.decoder)
        x = _trim(x)
        with pyro.plate("data", x.shape[0]):
            z = None
            if self.latent_dim:
                zeros = self.decoder["out"].weight.new_zeros((x.shape[0], self.latent_dim))
                z = pyro.sample("z", dist.Normal(zeros, 1.0).to_event(1))
            logits = self.logits(x, z)
            # the softmax is over ids 2.. (<eos> and the words); padding gets a valid dummy, masked out
            target = (x - EOS).clamp_min(0)
            pyro.sample("x", dist.Categorical(logits=logits).mask(x != PAD).to_event(1), obs=target)

    def guide(self, x: torch.Tensor) -> None:
        """q(z|x) = Normal(loc(x), scale(x)) from the LSTM encoder's state at each sentence's last token."""
        if not self.latent_dim:
            return
        pyro.module(f"{self.name}.embed", self.embed)
        pyro.module(f"{self.name}.encoder", self.encoder)
        x = _trim(x)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encode(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    # ------------------------------------------------------------------ networks

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and scale of q(z|x), ``(N, d)`` each; reads each sentence up to its ``<eos>`` only."""
        out, _ = self.encoder["rnn"](self.embed(x))
        last = out[torch.arange(x.shape[0], device=x.device), sentence_lengths(x) - 1]
        loc, raw = self.encoder["q"](last).chunk(2, -1)
        return loc, F.softplus(raw) + 1e-4

    def _initial_state(self, z: torch.Tensor | None, rows: int, like: torch.Tensor):
        if z is None:
            return None
        h0 = torch.tanh(self.decoder["init"](z)).reshape(rows, self.layers, self.width).transpose(0, 1)
        return h0.contiguous(), torch.zeros_like(h0)

    def logits(self, x: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """Teacher-forced logits ``(..., N, L, V - 2)`` of every token of ``x`` given the previous ones
        (and ``z``, of shape ``(..., N, d)``, e.g. with a leading particle dimension)."""
        n, length = x.shape
        inputs = torch.cat([torch.full_like(x[:, :1], BOS), x[:, :-1]], 1)
        if self.word_dropout and self.training and torch.is_grad_enabled():
            unk = self.vocab.unk if self.vocab is not None and self.vocab.unk is not None else None
            words = inputs > EOS
            drop = words & (torch.rand(inputs.shape, device=x.device) < self.word_dropout)
            # without an <unk> in the vocabulary the dropped word becomes a zero vector (<pad>'s embedding)
            inputs = torch.where(drop, torch.full_like(inputs, PAD if unk is None else unk), inputs)
        emb = self.embed(inputs)  # (N, L, e)
        batch = () if z is None else z.shape[:-2]
        if z is None:
            out, _ = self.decoder["rnn"](emb)
            return self.decoder["out"](out)
        copies = math.prod(batch)
        zf = z.reshape(copies * n, self.latent_dim)
        emb = emb.expand(copies, n, length, emb.shape[-1]).reshape(copies * n, length, -1)
        rnn_in = torch.cat([emb, zf[:, None, :].expand(-1, length, -1)], -1)
        out, _ = self.decoder["rnn"](rnn_in, self._initial_state(zf, copies * n, zf))
        return self.decoder["out"](out).reshape(*batch, n, length, -1)

    # ------------------------------------------------------------------ decoding, outside inference

    @torch.no_grad()
    def decode(self, z: torch.Tensor | None, sample: bool = False, max_length: int = 40,
               num: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Sentences ``(N, <= max_length)`` of token ids from p(x|z): greedy (argmax per token) or sampled;
        ``z=None`` with ``num`` sentences for the language model. Sentences that reach ``max_length``
        without an ``<eos>`` are cut there (and end in ``<eos>``)."""
        n = z.shape[0] if z is not None else int(num)
        device = self.decoder["out"].weight.device
        state = self._initial_state(z, n, z) if z is not None else None
        token = torch.full((n, 1), BOS, dtype=torch.long, device=device)
        out = torch.full((n, max_length), PAD, dtype=torch.long, device=device)
        done = torch.zeros(n, dtype=torch.bool, device=device)
        for t in range(max_length):
            emb = self.embed(token)
            if z is not None:
                emb = torch.cat([emb, z[:, None, :]], -1)
            h, state = self.decoder["rnn"](emb, state)
            logits = self.decoder["out"](h[:, 0])
            if sample:
                nxt = torch.multinomial(F.softmax(logits, -1), 1, generator=generator)[:, 0] + EOS
            else:
                nxt = logits.argmax(-1) + EOS
            if t == max_length - 1:
                nxt = torch.full_like(nxt, EOS)
            out[:, t] = torch.where(done, torch.full_like(nxt, PAD), nxt)
            done = done | (nxt == EOS)
            token = nxt[:, None]
            if done.all():
                break
        return _trim(out)

    @torch.no_grad()
    def generate(self, num_samples: int, sample: bool = False) -> torch.Tensor:
        """Sentences from the model, ``z ~ p(z)``: greedy decodes, or with ``sample=True`` draws ``x ~ p(x|z)``."""
        if not self.latent_dim:
            return self.decode(None, sample=sample, num=num_samples)
        z = torch.randn(num_samples, self.latent_dim, device=self.decoder["out"].weight.device)
        return self.decode(z, sample=sample)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """Greedy (or sampled) decodes of the posterior mean of q(z|x)."""
        return self.decode(self.encode(_trim(x))[0], sample=sample)

    @torch.no_grad()
    def homotopy(self, x_a: torch.Tensor, x_b: torch.Tensor, steps: int = 7) -> torch.Tensor:
        """Greedy decodes along the line from the posterior mean of sentence ``x_a`` (``(L,)`` ids) to
        that of ``x_b``: :math:`z(s) = (1 - s) \\mu(x_a) + s \\mu(x_b)`, ``steps`` points (Bowman et al. 2016)."""
        mu_a = self.encode(_trim(x_a[None]))[0]
        mu_b = self.encode(_trim(x_b[None]))[0]
        s = torch.linspace(0, 1, steps, device=mu_a.device)[:, None]
        return self.decode((1 - s) * mu_a + s * mu_b)

    def _sample_lines(self, num: int, sample: bool, gen: torch.Generator) -> list[str]:
        z = None
        if self.latent_dim:
            z = torch.randn(num, self.latent_dim, generator=gen, device=gen.device)
        return self._words(self.decode(z, sample=sample, num=num, generator=gen))

    # ------------------------------------------------------------------ run folder and summaries

    def report(self) -> dict[str, Any]:
        return {
            "likelihood": f"categorical over {self.data_dim - 2} tokens (words and <eos>) per position",
            "prior": "normal" if self.latent_dim else "none (language model)",
            "discrete_likelihood": True,
            "latent_dim": self.latent_dim,
        }

    @torch.no_grad()
    def heldout_metrics(self, x: torch.Tensor) -> dict[str, float]:
        """Mean KL(q(z|x) || p(z)) per held-out sentence (closed form), in nats."""
        if not self.latent_dim:
            return {}
        kls = []
        for (part,) in _row_batches(x, 500):
            loc, scale = self.encode(part)
            kls.append(_kl_normal(loc, scale).sum(-1))
        return {"heldout_kl": torch.cat(kls).mean().item()}

    def write_pictures(self, run: Path, heldout: TextData, history: list[dict], seed: int) -> list[str]:
        """samples.txt (prior, greedy and sampled), reconstructions.txt, homotopies.txt and curves.png."""
        from .. import plots

        return write_text_outputs(self, Path(run), heldout, seed) + plots.write_curves(Path(run), history)


def write_text_outputs(model: TextVAE, run: Path, heldout: TextData, seed: int, num: int = 10) -> list[str]:
    """What a user reads of a sentence model, written into ``run``: sentences from the prior (greedy and
    sampled decodes), reconstructions of held-out sentences, and homotopies between pairs of them."""
    from ..io import atomic_write

    model.prepare_data(heldout)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    written = []
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            gen = torch.Generator(device=device).manual_seed(seed)
            lines = [f"# {num} sentences from the model, seed {seed}" + (
                ": z ~ N(0, I), then greedy (argmax) and sampled decodes of p(x | z)" if model.latent_dim
                else ": the language model, greedy and sampled")]
            z = torch.randn(num, model.latent_dim, generator=gen, device=device) if model.latent_dim else None
            greedy = model.decode(z, num=num)
            drawn = model.decode(z, sample=True, num=num, generator=gen)
            for i, (g, s) in enumerate(zip(model._words(greedy), model._words(drawn))):
                lines += [f"{i + 1:2d} greedy:  {g}", f"   sampled: {s}"]
            atomic_write(run / "samples.txt", lambda f: f.write(("\n".join(lines) + "\n").encode()))
            written.append("samples.txt")
            if not model.latent_dim:
                return written
            x = heldout.sample(min(2 * num, len(heldout)), seed).tokens.to(device)
            lines = [f"# held-out sentences ({heldout.name}, drawn with seed {seed}) and decodes of the mean of "
                     "q(z | x): greedy, then sampled"]
            recon = model.reconstruct(x[:num])
            recon_s = model.decode(model.encode(_trim(x[:num]))[0], sample=True, generator=gen)
            for i, (a, g, s) in enumerate(zip(model._words(x[:num]), model._words(recon), model._words(recon_s))):
                lines += [f"{i + 1:2d} input:   {a}", f"   greedy:  {g}", f"   sampled: {s}", ""]
            atomic_write(run / "reconstructions.txt", lambda f: f.write(("\n".join(lines) + "\n").encode()))
            written.append("reconstructions.txt")
            lines = ["# homotopies: greedy decodes of z = (1 - s) mu(a) + s mu(b), s = 0, 1/6, ..., 1, between "
                     "the posterior means of two held-out sentences"]
            for i in range(min(5, len(x) // 2)):
                a, b = x[2 * i], x[2 * i + 1]
                lines += [f"a: {model._words(a[None])[0]}", f"b: {model._words(b[None])[0]}"]
                lines += [f"  {k / 6:.2f}  {s}" for k, s in enumerate(model._words(model.homotopy(a, b)))] + [""]
            atomic_write(run / "homotopies.txt", lambda f: f.write(("\n".join(lines) + "\n").encode()))
            written.append("homotopies.txt")
    finally:
        model.train(was_training)
    return written


class TextLM(TextVAE):
    """The LSTM language model: :class:`TextVAE`'s decoder without ``z`` (``latent_dim=0``)."""

    def __init__(
        self, data_dim: int = 10002, hidden: Sequence[int] = (256,), embed_dim: int = 256,
        word_dropout: float = 0.0, name: str = "textlm",
    ) -> None:
        super().__init__(data_dim, 0, hidden, embed_dim, word_dropout, name)


# --------------------------------------------------------------------------- bag of words


class SentenceMultinomial(TorchDistribution):
    r"""Counts :math:`c \in \mathbb N^V` with :math:`\sum_v c_v = n` (per row: ``total_count`` may differ
    between rows, unlike ``torch``'s Multinomial): :math:`\log p(c) = \log n! - \sum_v \log c_v! +
    \sum_v c_v \log \pi_v`."""

    arg_constraints = {"logits": constraints.real_vector}
    support = constraints.nonnegative_integer
    has_enumerate_support = False

    def __init__(self, total_count: torch.Tensor, logits: torch.Tensor, validate_args=None) -> None:
        self.logits = logits - logits.logsumexp(-1, keepdim=True)
        self.total_count = total_count
        batch_shape = torch.broadcast_shapes(logits.shape[:-1], total_count.shape)
        super().__init__(batch_shape, logits.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return SentenceMultinomial(self.total_count.expand(batch_shape),
                                   self.logits.expand(batch_shape + self.event_shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
            if not torch.equal(value.sum(-1).expand(self.batch_shape), self.total_count.to(value.dtype).expand(
                    self.batch_shape)):
                raise ValueError("SentenceMultinomial: the counts of a row must add up to its total_count")
        coef = torch.lgamma(self.total_count.to(value.dtype) + 1) - torch.lgamma(value + 1).sum(-1)
        return coef + (value * self.logits).sum(-1)

    def sample(self, sample_shape=torch.Size()):
        shape = torch.Size(sample_shape) + self.batch_shape
        probs = self.logits.exp().expand(shape + self.event_shape).reshape(-1, self.event_shape[0])
        n = self.total_count.expand(shape).reshape(-1)
        out = torch.zeros_like(probs)
        for i in range(len(n)):
            out[i] = torch.bincount(torch.multinomial(probs[i], int(n[i]), replacement=True),
                                    minlength=probs.shape[-1]).to(out.dtype)
        return out.reshape(shape + self.event_shape)


def bag_of_words(x: torch.Tensor, num_targets: int) -> torch.Tensor:
    """Counts ``(N, V - 2)`` of each scored token (``<eos>`` and the words) in each sentence of ``x``."""
    counts = torch.zeros(x.shape[0], num_targets + EOS, dtype=torch.float32, device=x.device)
    counts.scatter_add_(1, x, torch.ones_like(x, dtype=torch.float32))
    return counts[:, EOS:]


class BagOfWordsVAE(_TextModel):
    """A bag-of-words VAE: z ~ N(0, I), the sentence's token counts ~ Multinomial(T, softmax(f(z))).

    The same data as :class:`TextVAE` (token ids); the counts are taken inside ``model``/``guide``,
    and the length :math:`T` is given (the multinomial models which tokens, not how many).

    :param data_dim: the vocabulary's size V (specials included); V - 2 tokens are counted.
    :param latent_dim: dimension of ``z``.
    :param hidden: widths of the MLP encoder (on :math:`\\log(1 + c)`) and decoder.
    """

    def __init__(
        self, data_dim: int = 10002, latent_dim: int = 32, hidden: Sequence[int] = (256,), name: str = "bowvae",
    ) -> None:
        super().__init__()
        from ..nets import MLPDecoder, MLPEncoder

        if data_dim < 4:
            raise ValueError(f"data_dim is the vocabulary's size, specials included (at least 4), not {data_dim}")
        self.data_dim, self.latent_dim, self.name = data_dim, latent_dim, name
        self.num_targets = data_dim - 2
        self.encoder = MLPEncoder(self.num_targets, tuple(hidden), latent_dim, "softplus")
        self.decoder = MLPDecoder(latent_dim, tuple(hidden), self.num_targets, "softplus")

    def model(self, x: torch.Tensor) -> None:
        """p(z) p(counts | z, T) for the sentences ``x``."""
        pyro.module(f"{self.name}.decoder", self.decoder)
        counts = bag_of_words(x, self.num_targets)
        with pyro.plate("data", x.shape[0]):
            zeros = counts.new_zeros((x.shape[0], self.latent_dim))
            z = pyro.sample("z", dist.Normal(zeros, 1.0).to_event(1))
            pyro.sample("x", SentenceMultinomial(counts.sum(-1), self.decoder(z)), obs=counts)

    def guide(self, x: torch.Tensor) -> None:
        """q(z | counts) = Normal(loc, scale) of an MLP on log(1 + counts)."""
        pyro.module(f"{self.name}.encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encode(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(torch.log1p(bag_of_words(x, self.num_targets)))

    @torch.no_grad()
    def top_words(self, z: torch.Tensor, k: int = 12, distinctive: bool = False) -> list[str]:
        """The ``k`` most probable tokens under p(. | z), per row of ``z``; with ``distinctive``, those
        whose log-probability most exceeds their log-probability at z = 0 (the prior's centre), which
        are not the stop words that head every bag."""
        score = self.decoder(z).log_softmax(-1)
        if distinctive:
            score = score - self.decoder(torch.zeros_like(z[:1])).log_softmax(-1)
        ids = score.topk(k, -1).indices + EOS
        return [" ".join(self.vocab.words[i] if self.vocab else str(i) for i in row.tolist()) for row in ids]

    def _sample_lines(self, num: int, sample: bool, gen: torch.Generator) -> list[str]:
        """The 12 most probable tokens at each of ``num`` draws z ~ p(z) (a bag has no order to print)."""
        return self.top_words(torch.randn(num, self.latent_dim, generator=gen, device=gen.device))

    @torch.no_grad()
    def generate(self, num_samples: int, sample: bool = False) -> torch.Tensor:
        """Token probabilities (``sample=False``) or bags of 20 tokens from p(. | z), z ~ p(z)."""
        z = torch.randn(num_samples, self.latent_dim, device=next(self.parameters()).device)
        logits = self.decoder(z)
        if not sample:
            return logits.softmax(-1)
        return SentenceMultinomial(torch.full((num_samples,), 20.0), logits).sample()

    def report(self) -> dict[str, Any]:
        return {"likelihood": f"multinomial over {self.num_targets} tokens per sentence (length given)",
                "prior": "normal", "discrete_likelihood": True, "latent_dim": self.latent_dim,
                # a log-mass of a bag given its length, never ranked with the sequence models' log p(x)
                "scales": {"tokens": "bag-of-tokens-given-length"}}

    @torch.no_grad()
    def heldout_metrics(self, x: torch.Tensor) -> dict[str, float]:
        loc, scale = self.encode(x)
        return {"heldout_kl": _kl_normal(loc, scale).sum(-1).mean().item()}

    def write_pictures(self, run: Path, heldout: TextData, history: list[dict], seed: int) -> list[str]:
        """samples.txt (the most probable words at z ~ p(z)), reconstructions.txt, homotopies.txt, curves.png."""
        from .. import plots
        from ..io import atomic_write

        run = Path(run)
        self.prepare_data(heldout)
        device = next(self.parameters()).device
        gen = torch.Generator(device=device).manual_seed(seed)
        z = torch.randn(10, self.latent_dim, generator=gen, device=device)
        lines = [f"# the 12 most probable tokens of p(. | z), z ~ N(0, I), seed {seed}; then the 12 most distinctive "
                 "(the largest log p(v | z) - log p(v | z = 0))"]
        for i, (w, d) in enumerate(zip(self.top_words(z), self.top_words(z, distinctive=True))):
            lines += [f"{i + 1:2d} top:         {w}", f"   distinctive: {d}"]
        atomic_write(run / "samples.txt", lambda f: f.write(("\n".join(lines) + "\n").encode()))
        x = heldout.sample(min(20, len(heldout)), seed).tokens.to(device)
        mu = self.encode(x)[0]
        lines = ["# held-out sentences and the 12 most probable, then most distinctive, tokens at the mean of q(z | x)"]
        for a, w, d in zip(self._words(x[:10]), self.top_words(mu[:10]), self.top_words(mu[:10], distinctive=True)):
            lines += [f"input:       {a}", f"top:         {w}", f"distinctive: {d}", ""]
        atomic_write(run / "reconstructions.txt", lambda f: f.write(("\n".join(lines) + "\n").encode()))
        lines = ["# homotopies: the most distinctive tokens along z = (1 - s) mu(a) + s mu(b)"]
        s = torch.linspace(0, 1, 5, device=device)[:, None]
        for i in range(min(3, len(x) // 2)):
            lines += [f"a: {self._words(x[2 * i][None])[0]}", f"b: {self._words(x[2 * i + 1][None])[0]}"]
            path = (1 - s) * mu[2 * i] + s * mu[2 * i + 1]
            words = self.top_words(path, 8, distinctive=True)
            lines += [f"  {t:.2f}  {w}" for t, w in zip(s[:, 0].tolist(), words)] + [""]
        atomic_write(run / "homotopies.txt", lambda f: f.write(("\n".join(lines) + "\n").encode()))
        return list(TEXT_OUTPUTS) + plots.write_curves(run, history)


# --------------------------------------------------------------------------- scores


def text_scores(res, x: torch.Tensor) -> dict[str, Any]:
    r"""Per-sentence NLL and per-word perplexity from a :class:`~pyrovae.infer.MarginalLikelihood` on ``x``.

    With :math:`\hat\ell_i = \log \hat p(x_i)` (importance sampling, K samples) and :math:`T_i` tokens per
    sentence, ``<eos>`` counted (Mikolov et al. 2010; Bowman et al. 2016):

    .. math::

        \mathrm{NLL} = -\frac1N \sum_i \hat\ell_i, \qquad
        \mathrm{PPL} = \exp\Big(-\sum_i \hat\ell_i \Big/ \sum_i T_i\Big),

    and the same with the ELBO (the mean log-weight, the bound many papers report) in place of
    :math:`\hat\ell_i`. ``nll_mc_stderr`` is the Monte Carlo error (these sentences fixed),
    ``nll_data_stderr`` the error over sentences; the perplexity's errors follow by the delta method,
    :math:`\mathrm{se}(\mathrm{PPL}) = \mathrm{PPL} \cdot N\, \mathrm{se}(\mathrm{NLL}) / \sum_i T_i`.
    """
    tokens = int(sentence_lengths(x).sum())
    n = len(res.log_px)
    nll, elbo_nll = -res.log_px.sum().item(), -res.elbo.sum().item()
    ppl = math.exp(nll / tokens)
    mc, data = res.mean_stderr, res.data_stderr
    return {
        "num_sentences": n, "num_tokens": tokens, "tokens_counted": "words and <eos>",
        "nll_per_sentence": nll / n, "nll_mc_stderr": mc, "nll_data_stderr": data,
        "ppl_per_word": ppl, "ppl_mc_stderr": ppl * n * mc / tokens, "ppl_data_stderr": ppl * n * data / tokens,
        "elbo_nll_per_sentence": elbo_nll / n, "elbo_ppl_per_word": math.exp(elbo_nll / tokens),
    }


# --------------------------------------------------------------------------- helpers


def _trim(x: torch.Tensor) -> torch.Tensor:
    """``x`` without its all-padding columns (a batch is as long as its longest sentence)."""
    longest = int(sentence_lengths(x).max()) if x.numel() else 1
    return x[:, : max(longest, 1)]


def _kl_normal(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """KL(N(loc, scale^2) || N(0, 1)) per dimension."""
    return 0.5 * (loc**2 + scale**2 - 1) - torch.log(scale)


def _row_batches(x: torch.Tensor, size: int):
    for start in range(0, x.shape[0], size):
        yield (_trim(x[start : start + size]),)
