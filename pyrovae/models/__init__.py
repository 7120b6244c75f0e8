"""The model zoo: Pyro model/guide pairs registered by name (:mod:`.registry`).

* ``vae`` -- :class:`VAE`, the variational autoencoder with swappable likelihood and prior.
"""

from .registry import MODELS, ModelEntry, PyroModel, build_model, model_entry, register_model
from .vae import VAE, configure_vae

register_model(
    "vae", VAE, "variational autoencoder p(z) p(x|z), q(z|x) Gaussian (Kingma & Welling 2014)",
    configure=configure_vae,
)

__all__ = ["MODELS", "VAE", "ModelEntry", "PyroModel", "build_model", "model_entry", "register_model"]
