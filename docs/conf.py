"""Sphinx configuration: `make docs` builds the site into docs/_build/html (offline).

* API reference: autodoc of every public name (``docs/api/*.rst``, the ``pyrovae-api``
  directive of ``_ext/pyrovae_docs.py``); types from the annotations (sphinx-autodoc-typehints).
* User guide: the Markdown pages in docs/ through MyST, ``$...$`` and ``$$...$$`` math included.
* Examples: ``_ext/pyrovae_gallery.py`` runs each script of examples/ with small settings and
  writes one page per script (output, pictures, source). ``PYROVAE_DOCS_GALLERY=full`` runs the
  scripts at their own defaults, ``=off`` only shows their source.
* Math: MathJax 3 copied from the ``django-static-mathjax`` wheel into ``_static``, so pages
  render without a network; without that package the CDN copy is used.
* No intersphinx: the build never goes online.
"""

import os
import shutil
import sys
import warnings
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))

import pyrovae  # noqa: E402

# sphinx-autodoc-typehints still calls an API that Sphinx 10 removes: a Python warning (not a
# Sphinx one) per docstring, which says nothing about these docs
warnings.filterwarnings("ignore", message=".*set_application.*is deprecated", module="sphinx_autodoc_typehints")
warnings.filterwarnings("ignore", message=".*ArviZ is undergoing a major refactor.*", category=FutureWarning)

project = "pyrovae"
author = "the pyrovae developers"
copyright = "pyrovae developers"
release = pyrovae.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_autodoc_typehints",
    "myst_parser",
    "pyrovae_docs",
    "pyrovae_gallery",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "**/.ipynb_checkpoints", "images/**/README*"]
templates_path = []
pygments_style = "sphinx"
# curly quotes, but "--" stays two hyphens: the pages quote command-line flags in running text
smartquotes_action = "qe"

# --- autodoc: the docstrings are reStructuredText with :param x: field lists -----------------
autodoc_member_order = "bysource"
autodoc_default_options = {"show-inheritance": True}
autodoc_class_signature = "mixed"
# not preserve_defaults: it sets each documented function's __signature__, so that code run in the same
# process (the doctest builder) reads Sphinx's placeholders as defaults, e.g. the model registry's options
autodoc_preserve_defaults = False
autoclass_content = "both"  # class docstring and __init__'s parameters
typehints_document_rtype = True
typehints_use_rtype = False
typehints_defaults = "comma"
always_document_param_types = False
python_use_unqualified_type_names = True

# --- MyST for the Markdown pages ---------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
myst_dmath_double_inline = True

# --- doctest ---------------------------------------------------------------------------------------
doctest_global_setup = """
import torch, pyro, pyrovae
torch.set_num_threads(1)
"""

# --- HTML: the Read the Docs theme, as on docs.pyro.ai -----------------------------------------
html_theme = "sphinx_rtd_theme"
html_title = f"pyrovae {release}"
html_theme_options = {"navigation_depth": 3, "collapse_navigation": True}
toc_object_entries = False  # the sidebar lists pages and sections, not every function
html_static_path = ["_static"]
html_css_files = ["pyrovae.css"]
html_show_sourcelink = True


def _vendor_mathjax():
    """Copy MathJax 3 (tex-mml-chtml and what it loads) from the django-static-mathjax wheel."""
    try:
        import mathjax  # the django-static-mathjax package: a plain copy of MathJax's es5 build
    except ImportError:
        return None
    es5 = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    if not (es5 / "tex-mml-chtml.js").exists():
        return None
    static = DOCS / "_build" / ".mathjax-static"
    target = static / "mathjax"
    stamp = target / ".source"
    if not (stamp.exists() and stamp.read_text() == str(es5)):
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        shutil.copy2(es5 / "tex-mml-chtml.js", target)
        # loaded on demand: TeX extensions (autoload), the CommonHTML fonts, the menu and a11y
        for sub in ["input/tex", "output/chtml", "ui", "a11y", "adaptors"]:
            if (es5 / sub).exists():
                shutil.copytree(es5 / sub, target / sub)
        stamp.write_text(str(es5))
    return static


_mathjax_static = _vendor_mathjax()
if _mathjax_static is not None:
    html_static_path.append(str(_mathjax_static))
    mathjax_path = "mathjax/tex-mml-chtml.js"  # relative: served from _static/
# else: Sphinx's default, MathJax from a CDN (math then needs a network to render)

# --- the gallery (see _ext/pyrovae_gallery.py) --------------------------------------------------
# Each example's quick settings reuse the test suite's tiny flags (tests/test_examples*.py), with
# --train-size (every script has it: pyrovae.data.add_data_arguments); "{out}" is a folder for the
# pictures the script writes. Full mode runs the script at its own defaults, plus the "full" flags.
# "title" names the page.
pyrovae_gallery_mode = os.environ.get("PYROVAE_DOCS_GALLERY", "quick")
pyrovae_gallery_only = os.environ.get("PYROVAE_DOCS_GALLERY_ONLY", "")  # comma list: run just these
pyrovae_gallery_cache = os.environ.get("PYROVAE_DOCS_CACHE", str(DOCS / "_build" / ".gallery-cache"))
if os.environ.get("PYROVAE_DOCS_JOBS"):  # examples run side by side (default: 2, or 1 on one core)
    pyrovae_gallery_jobs = int(os.environ["PYROVAE_DOCS_JOBS"])
pyrovae_gallery_examples = {
    "vae": {
        "title": "A VAE on MNIST",
        "quick": "--train-size 1000 --epochs 1 --latent-dim 4 --hidden 32 --eval-samples 10 --eval-points 40",
    },
    "custom_model_guide": {
        "title": "Your own model/guide pair",
        "quick": "--train-size 1000 --test-size 200 --epochs 1 --latent-dim 4 --eval-samples 10",
    },
    "swap_likelihood": {
        "title": "Swapping the likelihood",
        "quick": "--train-size 1000 --variants bernoulli gaussian-sigma0.1 categorical-16-levels --epochs 1 "
                 "--latent-dim 4 --hidden 32 --test-size 60 --num-samples 20",
    },
    "swap_prior": {
        "title": "Swapping the prior",
        "quick": "--train-size 1000 --variants normal mog-10 flow --epochs 1 --latent-dim 4 --hidden 32 "
                 "--test-size 60 --num-samples 20",
    },
    "cvae": {
        "title": "Conditional VAE: completing digits",
        "quick": "--train-size 1000 --quadrants 3 --epochs 1 --eval-samples 10 --eval-points 40",
    },
    "mixture_vae": {
        "title": "Mixture VAE, the class enumerated",
        "quick": "--train-size 1000 --components 3 --latent-dim 4 --epochs 1 --eval-samples 10 --eval-points 40",
    },
    "ss_vae_m2": {
        "title": "Semi-supervised M2",
        "quick": "--num-labels 100 --epochs 1 --train-size 600 --test-size 100 --latent-dim 4 --hidden 32 "
                 "--eval-samples 20 --eval-points 30",
    },
    "ss_vae_m1m2": {
        "title": "M1+M2: semi-supervised M2 on a VAE's codes",
        "quick": "--num-labels 100 --m1-epochs 1 --m1-latent-dim 4 --m1-hidden 32 --epochs 1 --train-size 600 "
                 "--test-size 100 --latent-dim 3 --hidden 16 --eval-samples 20 --eval-points 30",
    },
    "jointvae": {
        "title": "JointVAE: continuous and discrete codes",
        "quick": "--epochs 1 --batch-size 100 --latent-dim 3 --categories 4 --hidden 32 --capacity-steps 50 "
                 "--train-size 600 --test-size 60 --num-samples 10 --no-progress --out {out}",
        "full": "--no-progress --out {out}",
    },
    "text_vae": {
        "title": "A sentence VAE on the Penn Treebank",
        "quick": "--train-size 200 --test-size 8 --epochs 1 --latent-dim 4 --hidden 16 --embed-dim 16 "
                 "--word-dropout 0.2 --free-bits 0.5 --kl-anneal 10 --num-samples 30 --no-progress --out {out}",
        "full": "--no-progress --out {out}",
    },
    "autoencoders": {
        "title": "Autoencoders beside a VAE",
        "quick": "--epochs 1 --train-size 300 --test-size 100 --batch-size 100 --latent-dim 4 --hidden 32 "
                 "--num-samples 100 --show 4 --no-progress --out {out}",
        "full": "--no-progress --out {out}",
    },
}

# --- the user guide: pages in this order; any other top-level page of docs/ follows ---------------
pyrovae_guide_order = [
    "math", "training", "importance_sampling", "ais", "likelihoods_priors", "zoo", "text", "objectives", "diagnostics",
    "autoencoders", "reliability", "benchmarks",
]
pyrovae_guide_exclude = ["index", "getting_started"]
