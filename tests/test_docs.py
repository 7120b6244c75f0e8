"""`make docs` builds: the Sphinx site with warnings as errors, its API reference and a gallery page.

Runs only where the docs tools are installed (`pip install -e '.[docs]'`, as `make docs` does).
The build works on a copy of docs/ in a temporary folder, so the repository's docs/gallery and
docs/_build are left alone; of the examples only autoencoders.py runs (quick settings, seconds),
the others get pages without output, as in `PYROVAE_DOCS_GALLERY_ONLY=autoencoders make docs`.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

for _module in ("sphinx", "myst_parser", "sphinx_rtd_theme", "sphinx_autodoc_typehints"):
    pytest.importorskip(_module)

ROOT = Path(__file__).parents[1]


def _text(path):
    """A page's text, without tags (highlighted code is split into spans)."""
    return re.sub(r"<[^>]+>", "", path.read_text())


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("docs")
    shutil.copytree(ROOT / "docs", tmp / "docs", ignore=shutil.ignore_patterns("_build", "gallery", "__pycache__"))
    shutil.copy2(ROOT / "README.md", tmp / "README.md")  # index.md and getting_started.md include it
    env = {**os.environ, "PYROVAE_DOCS_GALLERY": "quick", "PYROVAE_DOCS_GALLERY_ONLY": "autoencoders",
           "PYROVAE_DOCS_CACHE": str(tmp / "cache"), "PYTHONPATH": str(ROOT)}
    out = tmp / "html"
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "-d", str(tmp / "doctrees"),
           "-D", f"pyrovae_gallery_source={ROOT / 'examples'}", str(tmp / "docs"), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"sphinx-build failed:\n{proc.stdout[-5000:]}\n{proc.stderr[-10000:]}"
    return out


def test_the_site_has_its_index_guide_and_getting_started(site):
    index = (site / "index.html").read_text()
    for page in ["getting_started.html", "math.html", "training.html", "importance_sampling.html",
                 "gallery/index.html", "api/index.html"]:
        assert f'href="{page}' in index, page
        assert (site / page).exists(), page
    assert "make demo" in _text(site / "getting_started.html")  # the README's two commands


def test_the_api_reference_documents_the_public_names(site):
    top = (site / "api" / "pyrovae.html").read_text()
    for name in ["log_marginal_likelihood", "train", "VAE", "Trainer", "MarginalLikelihood", "make_likelihood"]:
        assert f'id="pyrovae.{name}"' in top, name
    infer = (site / "api" / "infer.html").read_text()
    assert 'id="pyrovae.infer.check_contract"' in infer
    assert 'href="pyrovae.html#pyrovae.train"' in infer  # a re-export links to where it is documented


def test_math_renders_from_the_site_itself(site):
    page = (site / "math.html").read_text()
    assert 'class="math' in page
    try:
        import mathjax  # noqa: F401  (django-static-mathjax)
    except ImportError:
        pytest.skip("django-static-mathjax not installed: MathJax comes from its CDN")
    assert "_static/mathjax/tex-mml-chtml.js" in page and "cdn.jsdelivr" not in page
    assert (site / "_static" / "mathjax" / "tex-mml-chtml.js").exists()


def test_a_gallery_page_shows_output_pictures_and_source(site):
    page = (site / "gallery" / "autoencoders.html").read_text()
    assert "<img" in page and "autoencoders.png" in page
    assert "Frechet" in _text(site / "gallery" / "autoencoders.html")  # the script's output
    assert "def main(args)" in _text(site / "gallery" / "autoencoders.html")  # its source
    assert list((site / "_images").glob("autoencoders*.png"))
    assert "Not run in this build" in (site / "gallery" / "vae.html").read_text()


def test_a_guide_page_whose_code_link_names_nothing_fails_the_build(tmp_path):
    """Equations link to the API entry that computes them; a broken link is an error under -W."""
    src = tmp_path / "src"
    (src / "api").mkdir(parents=True)
    (src / "conf.py").write_text(
        f"import sys; sys.path.insert(0, {str(ROOT / 'docs' / '_ext')!r})\n"
        "extensions = ['sphinx.ext.autodoc', 'myst_parser', 'pyrovae_docs']\n"
        "pyrovae_api_modules = ['pyrovae.frechet']\n")
    (src / "index.md").write_text("# Page\n\n```{toctree}\napi/index\n```\n\n"
                                  "$$ d = \\|\\mu_1 - \\mu_2\\|^2 $$\n\n"
                                  "Computed by {py:func}`pyrovae.frechet.frechet_distance_gaussians` and\n"
                                  "{py:func}`pyrovae.frechet.no_such_function`.\n")
    (src / "api" / "index.rst").write_text("API\n===\n\n.. pyrovae-api:: pyrovae.frechet\n")
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(src), str(tmp_path / "out")]
    proc = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert "'pyrovae.frechet.no_such_function' names nothing documented" in proc.stderr
    assert "frechet_distance_gaussians'" not in proc.stderr  # the good link resolved
    page = (tmp_path / "out" / "index.html").read_text()
    assert 'href="api/index.html#pyrovae.frechet.frechet_distance_gaussians"' in page
