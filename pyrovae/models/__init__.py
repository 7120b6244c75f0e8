"""The model zoo: Pyro model/guide pairs registered by name (:mod:`.registry`; ``docs/zoo.md``).

* ``vae`` -- :class:`VAE`, the variational autoencoder with swappable likelihood and prior.
* ``cvae``, ``quadrant-nn``, ``cvae-label`` -- conditional VAEs and the baseline (:mod:`.cvae`).
* ``mixture`` -- :class:`MixtureVAE`, a Gaussian mixture in latent space with an enumerated class.
* ``m2`` -- :class:`M2`, the semi-supervised VAE of Kingma et al. (2014).
* ``m1m2`` -- :class:`M1M2`, M2 on the latent codes of a trained VAE (Kingma et al. 2014's M1+M2).
* ``jointvae`` -- :class:`JointVAE`, continuous and relaxed discrete codes with capacity control.
* ``autoencoder`` -- :class:`AutoEncoder`, plain, denoising, sparse and contractive baselines (no p(x)).
* ``text-vae``, ``text-lm``, ``text-bow`` -- sentence VAE, LSTM language model, bag-of-words VAE (:mod:`.text`).
"""

from .autoencoders import AutoEncoder
from .cvae import LabelCVAE, QuadrantCVAE, QuadrantNN
from .jointvae import JointVAE
from .m1m2 import M1M2, configure_m1m2
from .m2 import M2, M2Objective
from .mixture import MixtureVAE
from .registry import MODELS, ModelEntry, PyroModel, build_model, model_entry, register_model
from .text import BagOfWordsVAE, TextLM, TextVAE
from .vae import VAE, configure_vae

register_model(
    "vae", VAE, "variational autoencoder p(z) p(x|z), q(z|x) Gaussian (Kingma & Welling 2014)",
    configure=configure_vae,
)
register_model(
    "cvae", QuadrantCVAE, "conditional VAE completing digits from 1-3 given quadrants, p(z|x) p(y|x,z), "
    "q(z|x,y) (Sohn et al. 2015)",
)
register_model("quadrant-nn", QuadrantNN, "deterministic baseline network for quadrant completion, p(y|x)")
register_model("cvae-label", LabelCVAE, "label-conditioned VAE p(z) p(x|y,z), q(z|x,y)")
register_model(
    "mixture", MixtureVAE, "mixture VAE, c ~ Cat(pi) enumerated, z|c Gaussian, x|z (Dilokthanakul et al. 2016)",
)
register_model(
    "m2", M2, "semi-supervised M2: y ~ Cat(1/10) observed on num_labels images, latent (summed out) on the rest, "
    "z ~ N(0, I), x|y,z Bernoulli (Kingma et al. 2014)",
)
register_model(
    "m1m2", M1M2, "stacked M1+M2: M2's y and z2 generate the latent z1 of a trained, frozen VAE M1 "
    "(--model-opt m1=RUN_OF_A_VAE); y observed on num_labels images (Kingma et al. 2014)",
    configure=configure_m1m2,
)
register_model(
    "jointvae", JointVAE, "JointVAE: z Gaussian and a relaxed categorical code c, capacity objective "
    "-gamma|KL - C| per latent (Dupont 2018)",
)
register_model(
    "autoencoder", AutoEncoder, "deterministic autoencoder baseline, Delta guide, no prior, no p(x): --model-opt "
    "kind=plain|denoising|sparse|contractive (Vincent et al. 2008; Ng 2011; Rifai et al. 2011)",
)
register_model(
    "text-vae", TextVAE, "sentence VAE: z ~ N(0, I), LSTM decoder, Categorical over the vocabulary per token, "
    "LSTM encoder q(z|x); word dropout (Bowman et al. 2016); --dataset ptb", data_args=("data_dim",),
)
register_model("text-lm", TextLM, "LSTM language model: the text-vae decoder without z; --dataset ptb",
               data_args=("data_dim",))
register_model("text-bow", BagOfWordsVAE, "bag-of-words VAE: z ~ N(0, I), token counts ~ "
               "Multinomial(T, softmax(f(z))); --dataset ptb", data_args=("data_dim",))

__all__ = [
    "M1M2", "M2", "MODELS", "VAE", "AutoEncoder", "JointVAE", "LabelCVAE", "M2Objective", "MixtureVAE", "ModelEntry",
    "PyroModel", "QuadrantCVAE", "QuadrantNN", "build_model", "model_entry", "register_model",
    "TextVAE", "TextLM", "BagOfWordsVAE",
]
