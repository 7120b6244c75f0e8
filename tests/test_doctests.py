"""The examples of the public docstrings run and show what they print.

`make docs` checks them too (Sphinx's doctest builder, on the API pages); this runs them without
Sphinx, one test per docstring, so `make test` catches a stale example where the docs tools are
not installed. Each docstring starts from the fresh stores of conftest's autouse fixture, and
without its module's globals.
"""

import doctest
import importlib
import pkgutil

import pytest

import pyrovae


def _modules():
    yield pyrovae
    for info in pkgutil.walk_packages(pyrovae.__path__, "pyrovae."):
        if not info.name.endswith(".__main__"):  # runs the command line on import
            yield importlib.import_module(info.name)


def _docstrings():
    finder = doctest.DocTestFinder(exclude_empty=True)
    found = {}
    for module in _modules():
        for test in finder.find(module):
            if test.examples:
                found.setdefault(test.name, test)
    return sorted(found.values(), key=lambda t: t.name)


DOCSTRINGS = _docstrings()


def test_the_main_public_names_have_examples():
    """A floor, so that examples are not lost silently (the report lists the names)."""
    names = {t.name for t in DOCSTRINGS}
    for name in ["pyrovae.models.vae.VAE", "pyrovae.data.load_train_test", "pyrovae.infer.weighted.BetaELBO",
                 "pyrovae.diagnostics.active_units", "pyrovae.frechet.frechet_distance",
                 "pyrovae.likelihoods.make_likelihood", "pyrovae.priors.make_prior",
                 "pyrovae.models.registry.register_model"]:
        assert name in names, name
    assert len(DOCSTRINGS) >= 55


@pytest.mark.parametrize("test", DOCSTRINGS, ids=[t.name for t in DOCSTRINGS])
def test_docstring_example(test):
    # no module globals: an example imports what it uses, so that it runs when copied, and under
    # Sphinx's doctest builder, which runs the examples of a page in a namespace of their own
    test.globs = {"__name__": "__doctest__"}
    report = []
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    result = runner.run(test, out=report.append, clear_globs=True)
    assert result.failed == 0, "".join(report)
