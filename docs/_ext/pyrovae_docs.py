"""Sphinx helpers for pyrovae's site: the API reference, cross-links, and the user-guide toctree.

* ``.. pyrovae-api:: pyrovae.infer`` documents a module: its docstring, a table of its public
  names (first sentence of each), and each object that no module earlier in ``pyrovae_api_modules`` already
  documents (so ``pyrovae.train`` is documented once, as ``pyrovae.train``, and listed in the
  table of ``pyrovae.infer``). With ``:submodules:`` the module's submodules follow.
* References by any public path (``pyrovae.infer.trainer.Trainer``, ``pyrovae.models.VAE``) are
  resolved by object identity to where the object is documented.
* Inline code that names a page (```docs/math.md```), an example (```examples/vae.py```) or a
  documented Python name (```pyrovae.train```) becomes a link.
* ``@user-guide@`` in index.md expands to the guide's pages: ``pyrovae_guide_order`` first,
  then every other top-level page of docs/.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
import re
from types import ModuleType

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

DEFAULT_MODULES = [
    "pyrovae", "pyrovae.infer", "pyrovae.infer.*", "pyrovae.models", "pyrovae.models.*", "pyrovae.likelihoods",
    "pyrovae.priors", "pyrovae.data", "pyrovae.text", "pyrovae.diagnostics", "pyrovae.frechet", "pyrovae.scoring",
    "pyrovae.config", "pyrovae.runs", "pyrovae.nets", "pyrovae.distributions", "pyrovae.plots", "pyrovae.io",
]


# --- the plan: which module documents which object -------------------------------------------------

class Plan:
    """Modules in order; for each, its public names and the objects it documents (first wins)."""

    def __init__(self, patterns):
        self.modules: dict[str, ModuleType] = {}
        self.names: dict[str, list[tuple[str, object]]] = {}  # module -> public (name, object)
        self.documents: dict[str, list[tuple[str, object]]] = {}  # module -> what it documents
        self.canonical: dict[int, str] = {}  # id(object) -> documented full name
        self.object_names: set[str] = set()  # full names of everything documented as an object
        self.errors: list[str] = []
        for name in self._expand(patterns):
            try:
                module = importlib.import_module(name)
            except Exception as exc:  # reported as a warning: a module that cannot be imported
                self.errors.append(f"cannot import {name}: {exc!r}")
                continue
            self.modules[name] = module
            self.names[name] = public_names(module)
            mine = []
            for short, obj in self.names[name]:
                if inspect.ismodule(obj) or id(obj) in self.canonical:
                    continue
                if inspect.isclass(obj) or inspect.isfunction(obj) or callable(obj):
                    self.canonical[id(obj)] = f"{name}.{short}"
                mine.append((short, obj))
                self.object_names.add(f"{name}.{short}")
            self.documents[name] = mine

    @staticmethod
    def _expand(patterns):
        out = []
        for pattern in patterns:
            if pattern.endswith(".*"):
                package = pattern[:-2]
                spec = importlib.util.find_spec(package)
                if spec is None or not spec.submodule_search_locations:
                    continue
                subs = sorted(m.name for m in pkgutil.iter_modules(spec.submodule_search_locations)
                              if not m.name.startswith("_"))
                out += [f"{package}.{sub}" for sub in subs if f"{package}.{sub}" not in out]
            elif importlib.util.find_spec(pattern) is not None and pattern not in out:
                out.append(pattern)  # a module listed but absent (not written yet) is left out
        return out


def public_names(module):
    """``__all__`` when the module has one; else the classes and functions defined in it."""
    if hasattr(module, "__all__"):
        return [(n, getattr(module, n)) for n in module.__all__ if not n.startswith("__") and hasattr(module, n)]
    found = []
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        source = ""
    for name, obj in vars(module).items():
        if name.startswith("_"):
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj):
            if getattr(obj, "__module__", None) == module.__name__:
                found.append((name, obj))
        elif name.isupper() and isinstance(obj, (dict, list, tuple, str, int, float)) and re.search(
                rf"^{name}\s*[:=]", source, re.M):  # a constant assigned here (PYRO_TRAINING, KINDS)
            found.append((name, obj))
    return found


def _plan(env) -> Plan:
    plan = getattr(env.app, "_pyrovae_plan", None)
    if plan is None:
        plan = env.app._pyrovae_plan = Plan(env.config.pyrovae_api_modules)
        for error in plan.errors:
            logger.warning(error, type="pyrovae", subtype="api")
    return plan


def _kind(obj):
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        return "exception"
    if inspect.isclass(obj):
        return "class"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return "function"
    return "data"


def _source_line(obj):
    try:
        return inspect.getsourcelines(obj)[1]
    except (TypeError, OSError):
        return 10**9


class ApiDirective(SphinxDirective):
    """Document one module (and, with ``:submodules:``, its submodules) by the plan."""

    required_arguments = 1
    option_spec = {"submodules": directives.flag, "heading": directives.flag}

    def run(self):
        plan = _plan(self.env)
        target = self.arguments[0]
        names = [target]
        if "submodules" in self.options:
            names += [m for m in plan.modules if m.startswith(target + ".")]
        if target not in plan.modules:
            return [nodes.paragraph(text=f"{target} is not part of this version of pyrovae.")]
        rendered = self.env.__dict__.setdefault("pyrovae_api_rendered", {})  # docname -> modules; pickled
        rendered.setdefault(self.env.docname, set()).update(names)
        lines = []
        for name in names:
            lines += self._module(plan, name, heading=name != target or "heading" in self.options)
        return self.parse_text_to_nodes("\n".join(lines), allow_section_headings=True)

    @staticmethod
    def _module(plan, name, heading):
        module = plan.modules[name]
        lines = []
        if heading:
            lines += ["", name, "-" * len(name), ""]
        lines += [f".. automodule:: {name}"]
        if name in plan.object_names:  # e.g. pyrovae.infer.factors: a module and, shadowing it, a function
            lines += ["   :no-index:"]
        lines += [""]
        public = plan.names[name]
        mine = plan.documents[name]
        if not public:
            return lines
        if hasattr(module, "__all__"):
            order = sorted(public, key=lambda p: p[0].lower())
            mine = sorted(mine, key=lambda p: p[0].lower())
        else:
            order = sorted(public, key=lambda p: _source_line(p[1]))
            mine = sorted(mine, key=lambda p: _source_line(p[1]))
        listed = [(n, obj) for n, obj in order if not inspect.ismodule(obj)]
        if listed:
            lines += [".. list-table::", "   :widths: 30 70", "   :class: pyrovae-summary pyrovae-wrap", ""]
            for short, obj in listed:
                lines += [f"   * - :py:obj:`{short} <{name}.{short}>`", f"     - {summary(obj)}"]
            lines += [""]
        submods = [n for n, obj in order if inspect.ismodule(obj)]
        if submods:
            lines += ["Submodules: " + ", ".join(f":mod:`{getattr(module, n).__name__}`" for n in submods), ""]
        groups = {"function": "Functions", "class": "Classes", "exception": "Exceptions", "data": "Data"}
        for kind, title in groups.items():
            members = [(n, obj) for n, obj in mine if _kind(obj) == kind]
            if not members:
                continue
            lines += [f".. rubric:: {title}", ""]
            for short, obj in members:
                full = f"{name}.{short}"
                if kind == "class":
                    lines += [f".. autoclass:: {full}", "   :members:", ""]
                elif kind == "exception":
                    lines += [f".. autoexception:: {full}", ""]
                elif kind == "function":
                    lines += [f".. autofunction:: {full}", ""]
                else:  # autodata would show the docstring of the value's type (dict's, for a registry)
                    lines += [f".. py:data:: {short}", f"   :module: {name}", f"   :type: {type(obj).__name__}", "",
                              f"   {describe(obj)}", ""]
        return lines


ABBREVIATIONS = ("et al.", "e.g.", "i.e.", "cf.", "vs.", "etc.", "resp.", "Eq.", "Fig.", "No.")


def summary(obj) -> str:
    """The first sentence of the docstring, cut at a full stop where no inline markup is open."""
    if _kind(obj) == "data":
        return describe(obj)
    doc = inspect.getdoc(obj) or ""
    para = " ".join(doc.strip().split("\n\n", 1)[0].split())
    for m in re.finditer(r"\.(\s|$)", para):
        head = para[: m.start() + 1]
        if head.endswith(ABBREVIATIONS) or re.search(r"(^|\s)\w\.$", head):  # "et al.", "x."
            continue
        rest = re.sub(r"``.+?``", "", head)  # complete literals; what is left must open no markup
        balanced = rest.count("`") % 2 == 0 and rest.count("*") % 2 == 0 and rest.count("(") == rest.count(")")
        if "``" not in rest and balanced:
            return head
    return para


def describe(obj) -> str:
    if isinstance(obj, dict) and obj and all(callable(v) or hasattr(v, "__dict__") for v in obj.values()):
        return f"A registry by name ({len(obj)} entries: {', '.join(f'``{k}``' for k in obj)})."
    text = repr(obj)
    if len(text) <= 300 and "`" not in text:
        return f"``{text}``"
    kind = f"A ``{type(obj).__name__}``"
    return f"{kind} of {len(obj)} entries." if hasattr(obj, "__len__") else f"{kind}."


def purge_rendered(app, env, docname):
    getattr(env, "pyrovae_api_rendered", {}).pop(docname, None)


def check_rendered(app, env):
    """Every module of the plan appears on some API page."""
    plan = _plan(env)
    rendered = set().union(*getattr(env, "pyrovae_api_rendered", {}).values())
    for name in plan.modules:
        if name not in rendered and plan.documents[name]:
            logger.warning(f"{name} is in pyrovae_api_modules but on no API page (docs/api/*.rst)",
                           type="pyrovae", subtype="api")


# --- docstrings: ":param model, guide: text" documents both names -----------------------------------

MULTI_PARAM = re.compile(r"^(\s*):param ((?:\w+\s*,\s*)+\w+):(.*)$")


def split_multi_params(app, what, name, obj, options, lines):
    """``:param a, b: text`` (read by Sphinx as type ``a,`` of ``b``) as one field per name."""
    out, i = [], 0
    while i < len(lines):
        m = MULTI_PARAM.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        indent, names, first = m.group(1), [n.strip() for n in m.group(2).split(",")], m.group(3)
        body = [first]
        i += 1
        while i < len(lines) and lines[i].strip() and len(lines[i]) - len(lines[i].lstrip()) > len(indent):
            body.append(lines[i])
            i += 1
        for n in names:
            out.append(f"{indent}:param {n}:{body[0]}")
            out.extend(body[1:])
    lines[:] = out


def drop_inherited_init_doc(app, what, name, obj, options, lines):
    """A class whose ``__init__`` has no docstring of its own would show its base's under
    ``autoclass_content = "both"``: ``nn.Module``'s "Initialize internal Module state" on every model."""
    if what != "class" or not inspect.isclass(obj):
        return
    for klass in obj.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or not getattr(init, "__doc__", None):
            continue
        if klass.__module__.split(".")[0] == "pyrovae":
            return  # the class's own (or a pyrovae base's) constructor documentation
        doc = [line.strip() for line in inspect.cleandoc(init.__doc__).splitlines()]
        break
    else:
        return
    for i in range(len(lines) - len(doc), -1, -1):
        if [line.strip() for line in lines[i:i + len(doc)]] == doc:
            del lines[i:i + len(doc)]
            return


# --- references by any public path ------------------------------------------------------------------

def documented_name(env, target, module=None, cls=None):
    """The documented full name (or module) that ``target`` denotes, by object identity; or None."""
    domain = env.get_domain("py")
    candidates = [target]
    if module and not target.startswith("pyrovae"):
        candidates += [f"{module}.{cls}.{target}" if cls else None, f"{module}.{target}"]
    plan = _plan(env)
    for candidate in filter(None, candidates):
        if candidate in domain.objects or candidate in domain.modules:
            return candidate
        if not candidate.startswith("pyrovae"):
            continue
        parts = candidate.split(".")
        obj = None
        for i in range(len(parts), 0, -1):  # the longest importable module prefix
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except Exception:
                continue
            rest = parts[i:]
            break
        else:
            continue
        for j, attr in enumerate(rest):
            obj = getattr(obj, attr, None)
            if obj is None:
                break
            if id(obj) in plan.canonical:
                name = ".".join([plan.canonical[id(obj)], *rest[j + 1:]])
                if name in domain.objects:
                    return name
        if inspect.ismodule(obj) and obj.__name__ in domain.modules:
            return obj.__name__
    return None


def resolve_missing(app, env, node, contnode):
    """A ``py`` reference by any public path, or by the wrong role (``{py:func}`` of a class).

    On the guide's pages (everything but ``api/``) a reference that names nothing documented is a
    warning, so that `make docs` (``-W``) fails on a broken equation-to-code link; Sphinx itself
    only warns with ``nitpicky``, which would also flag every torch type of the API pages."""
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    refdoc = node.get("refdoc", env.docname)
    name = documented_name(env, target, node.get("py:module"), node.get("py:class"))
    resolved = None
    if name is not None:
        resolved = env.get_domain("py").resolve_xref(env, refdoc, app.builder, "obj", name, node, contnode)
    if resolved is None and not refdoc.startswith("api/"):
        logger.warning(f"{target!r} names nothing documented in the API reference", location=node,
                       type="pyrovae", subtype="ref")
    return resolved


# --- inline code that names a page, an example or a Python object becomes a link --------------------

PAGE = re.compile(r"^(?:docs/)?([\w/-]+)\.md(#[\w-]+)?$")
EXAMPLE = re.compile(r"^examples/(\w+)\.py$")
PYNAME = re.compile(r"^(pyrovae(?:\.\w+)+)(?:\(\))?$")


class LinkInlineCode(SphinxPostTransform):
    default_priority = 20  # after the ReferencesResolver (10): resolved roles are references by then
    formats = ("html",)

    def run(self, **kwargs):
        builder = self.app.builder
        docname = self.env.docname
        domain = self.env.get_domain("py")
        for literal in list(self.document.findall(nodes.literal)):
            if "xref" in literal.get("classes", []):  # a role's text, resolved or not
                continue
            if any(isinstance(a, (nodes.reference, nodes.title, nodes.literal_block)) for a in _ancestors(literal)):
                continue
            text = literal.astext().strip()
            uri = None
            if m := PAGE.match(text):
                page = m.group(1)
                if page in self.env.found_docs and page != docname:
                    uri = builder.get_relative_uri(docname, page) + (m.group(2) or "")
            elif m := EXAMPLE.match(text):
                page = f"gallery/{m.group(1)}"
                if page in self.env.found_docs and page != docname:
                    uri = builder.get_relative_uri(docname, page)
            elif m := PYNAME.match(text):
                name = documented_name(self.env, m.group(1))
                if name in domain.objects:
                    entry = domain.objects[name]
                    uri = builder.get_relative_uri(docname, entry.docname) + "#" + entry.node_id
                elif name in domain.modules:
                    entry = domain.modules[name]
                    uri = builder.get_relative_uri(docname, entry.docname) + "#" + entry.node_id
            if uri is not None:
                ref = nodes.reference("", "", internal=True, refuri=uri)
                literal.replace_self(ref)
                ref.append(literal)


def _ancestors(node):
    node = node.parent
    while node is not None:
        yield node
        node = node.parent


# --- the user guide's pages in index.md ---------------------------------------------------------------

def user_guide(app, docname, source):
    if docname != app.config.root_doc or not re.search(r"^@user-guide@$", source[0], re.M):
        return
    found = app.env.found_docs
    order = [p for p in app.config.pyrovae_guide_order if p in found]
    skip = set(order) | set(app.config.pyrovae_guide_exclude) | {app.config.root_doc}
    order += sorted(p for p in found if "/" not in p and p not in skip)
    source[0] = re.sub(r"^@user-guide@$", "\n".join(order), source[0], flags=re.M)


def guide_outdated(app, env, added, changed, removed):
    """A top-level page added or removed changes index.md's toctree: read the index again."""
    if any("/" not in d for d in set(added) | set(removed)):
        return [app.config.root_doc]
    return []


def setup(app):
    app.add_config_value("pyrovae_api_modules", DEFAULT_MODULES, "env")
    app.add_config_value("pyrovae_guide_order", [], "env")
    app.add_config_value("pyrovae_guide_exclude", [], "env")
    app.add_directive("pyrovae-api", ApiDirective)
    app.connect("autodoc-process-docstring", split_multi_params, priority=400)  # before the typehints
    app.connect("autodoc-process-docstring", drop_inherited_init_doc)
    app.connect("missing-reference", resolve_missing)
    app.connect("env-purge-doc", purge_rendered)
    app.connect("env-check-consistency", check_rendered)
    app.connect("source-read", user_guide)
    app.connect("env-get-outdated", guide_outdated)
    app.add_post_transform(LinkInlineCode)
    return {"version": "1", "parallel_read_safe": False, "parallel_write_safe": True}
