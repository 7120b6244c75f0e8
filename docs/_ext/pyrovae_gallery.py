"""The example gallery: one page per script of examples/, with what it printed and drew.

At ``builder-inited`` each ``examples/*.py`` is run as ``python examples/NAME.py FLAGS`` with the
flags of ``pyrovae_gallery_examples[NAME][mode]`` (the test suite's tiny settings in quick mode,
the script's own defaults in full mode), in a folder of its own under ``pyrovae_gallery_cache``;
its output and every PNG it wrote are kept there, keyed by the script's text and the flags, so
an unchanged example is not run again. Then ``gallery/NAME.rst`` (the docstring, the command,
the output, the pictures and the source) and ``gallery/index.rst`` are written into the source
folder; ``docs/gallery/`` is generated and ignored by git. The scripts keep their names and
conventions: nothing of sphinx-gallery's (``plot_*.py``, ``README.txt``) is needed.

A script runs in a forked copy of the Sphinx process (torch and pyrovae already imported: no
seconds of imports per example), ``pyrovae_gallery_jobs`` of them at a time, or one at a time in
a subprocess where ``fork`` is unavailable. A script that
fails is a warning (an error under ``-W``), its page showing the traceback.

Settings (docs/conf.py; the environment variables in brackets):

* ``pyrovae_gallery_mode`` [``PYROVAE_DOCS_GALLERY``]: ``quick`` (default), ``full`` or ``off``
  (source only, nothing run);
* ``pyrovae_gallery_only`` [``PYROVAE_DOCS_GALLERY_ONLY``]: comma-separated names: run only these
  (the others show a cached result if there is one);
* ``pyrovae_gallery_cache`` [``PYROVAE_DOCS_CACHE``]: where runs are kept;
* ``pyrovae_gallery_timeout``: seconds per script (default 900);
* ``pyrovae_gallery_jobs`` [``PYROVAE_DOCS_JOBS``]: scripts run at a time (default 2, at most the
  number of cores), each with an equal share of the cores as torch threads.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from sphinx.util import logging

logger = logging.getLogger(__name__)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


PROGRESS = re.compile(r"^[^|]*\d+%\|.*\|")  # a tqdm bar: "epoch 1/1:  45%|████ | 32/71 [...]"


def clean_output(text: str, root: str | None = None) -> str:
    """Terminal output as a reader would have seen it at the end: each run of progress-bar updates
    reduced to its last state, paths inside the repository made relative."""
    lines = []
    for line in ANSI.sub("", text).replace("\r\n", "\n").split("\n"):
        line = line.rstrip().split("\r")[-1].rstrip()
        if root:
            line = line.replace(root.rstrip("/") + "/", "")
        if lines and PROGRESS.match(line) and PROGRESS.match(lines[-1]):
            lines[-1] = line
        else:
            lines.append(line)
    return "\n".join(lines).strip("\n")


def _docstring(path: Path) -> str:
    try:
        return ast.get_docstring(ast.parse(path.read_text()), clean=True) or ""
    except SyntaxError:
        return ""


SHELL = re.compile(r"^\s*(?:python3?\s|pyrovae\s|torchrun\s|bash\s|make\s|[A-Z][A-Z_]*=)")


def literal_blocks(doc: str) -> str:
    """Indented blocks of a script's docstring as literal blocks, not block quotes: commands as
    shell, the rest (a model and guide after ``::``) as Python. A blank line inside a block does
    not start another."""
    lines, out, in_block = doc.split("\n"), [], False
    for i, line in enumerate(lines):
        indented = bool(line.strip()) and line.startswith((" ", "\t"))
        if line.strip() and not indented:
            in_block = False
        if indented and not in_block and i > 0 and not lines[i - 1].strip():
            in_block = True
            before = next((x for x in reversed(out) if x.strip()), "")
            if not before.rstrip().endswith("::"):
                out += [".. code-block:: bash" if SHELL.match(line) else "::", ""]
        out.append(line)
    return "\n".join(out)


def _first_paragraph(doc: str) -> str:
    return " ".join(doc.split("\n\n", 1)[0].split())


def _child(script: Path, argv: list[str]) -> int:
    """Run the script as ``__main__`` in this process; its exit status."""
    import runpy

    os.environ["MPLBACKEND"] = "Agg"
    import warnings

    # a warning as a reader sees it: its category and message, not the library line that raised it
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"{category.__name__}: {message}\n"
    sys.argv = [str(script), *argv]
    try:
        runpy.run_path(str(script), run_name="__main__")
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)


def _fork(script, argv, workdir: Path, log: Path, threads: int) -> int:
    """Start the script in a forked copy of this process; its pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns into Sphinx
        code = 1
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.chdir(workdir)
            import torch

            torch.set_num_threads(threads)  # the scripts running side by side share the cores
            code = _child(script, argv)
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    return pid


def _run_subprocess(script, argv, workdir: Path, log: Path, timeout: float) -> int:
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import pyrovae_gallery as g; "
            f"sys.exit(g._child(sys.argv[1], sys.argv[2:]))")
    with open(log, "w") as f:
        try:
            return subprocess.run([sys.executable, "-c", code, str(script), *argv], cwd=workdir, stdout=f,
                                  stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            f.write(f"\n[stopped after {timeout:.0f} s: pyrovae_gallery_timeout]\n")
            return -9


def _key(script: Path, flags: str, mode: str) -> str:
    return hashlib.sha256(script.read_bytes() + f"\0{mode}\0{flags}".encode()).hexdigest()


def cached_record(script: Path, flags: str, cache: Path, mode: str) -> dict | None:
    """The record of an earlier successful run of the same script text with the same flags."""
    record_file = cache / "record.json"
    if record_file.exists():
        record = json.loads(record_file.read_text())
        if record.get("key") == _key(script, flags, mode):
            return record
    return None


def _prepare(script: Path, flags: str, cache: Path) -> list[str]:
    shutil.rmtree(cache, ignore_errors=True)
    (cache / "run").mkdir(parents=True)
    argv = shlex.split(flags.replace("{out}", "out"))
    logger.info(f"gallery: running examples/{script.name} {' '.join(argv)}")
    return argv


def _finish(script: Path, flags: str, cache: Path, mode: str, argv, code: int, seconds: float) -> dict:
    images = sorted(str(p.relative_to(cache / "run")) for p in (cache / "run").rglob("*.png"))
    record = {"key": _key(script, flags, mode), "returncode": code, "seconds": seconds, "argv": argv, "mode": mode,
              "images": images}
    if code == 0:  # a failed run is tried again next time
        (cache / "record.json").write_text(json.dumps(record, indent=1))
    return record


def run_examples(jobs, timeout: float, mode: str, parallel: int = 1) -> dict[str, dict]:
    """Run each ``(script, flags, cache)`` of ``jobs`` not cached, ``parallel`` at a time (forked
    copies of this process; one at a time in subprocesses where there is no fork); the records by
    script name."""
    records, pending = {}, []
    for script, flags, cache in jobs:
        record = cached_record(script, flags, cache, mode)
        if record is not None:
            records[script.stem] = record
        else:
            pending.append((script, flags, cache))
    if not (hasattr(os, "fork") and sys.platform.startswith("linux")):
        for script, flags, cache in pending:
            argv = _prepare(script, flags, cache)
            start = time.perf_counter()
            code = _run_subprocess(script, argv, cache / "run", cache / "output.txt", timeout)
            records[script.stem] = _finish(script, flags, cache, mode, argv, code, time.perf_counter() - start)
        return records
    parallel = max(1, min(parallel, len(pending)))
    threads = max(1, (os.cpu_count() or 1) // parallel)
    running = {}  # pid -> (job, argv, start)
    while pending or running:
        while pending and len(running) < parallel:
            script, flags, cache = pending.pop(0)
            argv = _prepare(script, flags, cache)
            pid = _fork(script, argv, cache / "run", cache / "output.txt", threads)
            running[pid] = ((script, flags, cache), argv, time.perf_counter())
        for pid in list(running):
            (script, flags, cache), argv, start = running[pid]
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
            elif time.perf_counter() - start > timeout:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                with open(cache / "output.txt", "a") as f:
                    f.write(f"\n[stopped after {timeout:.0f} s: pyrovae_gallery_timeout]\n")
                code = -signal.SIGKILL
            else:
                continue
            del running[pid]
            records[script.stem] = _finish(script, flags, cache, mode, argv, code, time.perf_counter() - start)
        time.sleep(0.1)
    return records


def _write_if_changed(path: Path, text: str):
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _sync_images(record, cache: Path, target: Path) -> list[str]:
    """Copy the run's PNGs next to the page; the paths relative to the gallery folder."""
    shutil.rmtree(target, ignore_errors=True)
    out = []
    for rel in record.get("images", []) if record else []:
        src = cache / "run" / rel
        if src.exists():
            dst = target / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
            out.append(f"images/{target.name}/{rel}")
    return out


def _wrap_command(words: list[str], width: int = 88) -> str:
    """A shell command broken before its flags into lines of at most ``width`` characters (a long
    one-line command scrolls sideways on the page)."""
    lines = [words[0]]
    for word in words[1:]:
        if word.startswith("--") and len(lines[-1]) + 1 + len(word) > width:
            lines[-1] += " \\"
            lines.append("    " + word)
        else:
            lines[-1] += " " + word
    return "\n".join(lines)


def _indent(text: str, by: str = "   ") -> str:
    return "\n".join(by + line if line.strip() else "" for line in text.split("\n"))


def _page(name, title, doc, source_rel, record, output, images, mode, flags, reason) -> str:
    heading = f"{title}"
    lines = [f".. _gallery-{name}:", "", heading, "=" * len(heading), "",
             f":download:`examples/{name}.py <{source_rel}>` · all examples: :doc:`index`", ""]
    if doc:
        lines += [literal_blocks(doc), ""]
    lines += ["Output", "------", ""]
    if record is None:
        lines += [f"*Not run in this build ({reason}).* Run it yourself::", "",
                  f"   python examples/{name}.py {flags}".rstrip(), ""]
    else:
        command = _wrap_command(["python", f"examples/{name}.py", *map(shlex.quote, record["argv"])])
        how = "with the small settings of the docs build" if record["mode"] == "quick" else "at full size"
        lines += [f"Run {how} in {record['seconds']:.0f} s (``PYROVAE_DOCS_GALLERY=full make docs`` runs the "
                  "examples at their own defaults):" if record["mode"] == "quick" else
                  f"Run {how} in {record['seconds']:.0f} s:", "", ".. code-block:: bash", "", _indent(command), ""]
        if record["returncode"] != 0:
            lines += [f".. error:: The script exited with status {record['returncode']}.", ""]
        lines += [".. code-block:: text", "   :class: pyrovae-output", "", _indent(output or "(no output)"), ""]
        for image in images:
            lines += [f".. figure:: {image}", f"   :alt: {Path(image).name}", "", f"   ``{Path(image).name}``", ""]
    lines += ["Source", "------", "", f".. literalinclude:: {source_rel}", "   :language: python",
              "   :linenos:", ""]
    return "\n".join(lines)


def _index(entries) -> str:
    lines = [".. _gallery:", "", "Examples", "========", "",
             "Each script in ``examples/`` as it ran for this build of the documentation: its output, the "
             "pictures it wrote and its source. The docs build runs them with small settings (few epochs, "
             "a small network, few importance samples), so their numbers only show what the scripts "
             "report; each script's docstring gives the command for the real run, and "
             "``PYROVAE_DOCS_GALLERY=full make docs`` runs them all at their own defaults (long).", "",
             ".. toctree::", "   :hidden:", ""]
    lines += [f"   {e['name']}" for e in entries]
    lines += ["", ".. list-table::", "   :widths: 30 50 20", "   :header-rows: 1", "   :class: pyrovae-wrap", "",
              "   * - Example", "     - What it shows", "     - Picture"]
    for e in entries:
        picture = f".. image:: {e['images'][0]}\n          :width: 160px\n          :alt: {e['name']}" if e[
            "images"] else ""
        lines += [f"   * - :doc:`{e['title']} <{e['name']}>`", "", f"       ``examples/{e['name']}.py``",
                  f"     - {e['summary']}", f"     - {picture}"]
    lines.append("")
    return "\n".join(lines)


def generate(app):
    config = app.config
    srcdir = Path(app.srcdir)
    examples_dir = (Path(app.confdir) / config.pyrovae_gallery_source).resolve()
    gallery = srcdir / config.pyrovae_gallery_dir
    cache_root = Path(config.pyrovae_gallery_cache)
    mode = config.pyrovae_gallery_mode
    if mode not in ("quick", "full", "off"):
        logger.warning(f"pyrovae_gallery_mode must be quick, full or off, not {mode!r}: using quick",
                       type="pyrovae", subtype="gallery")
        mode = "quick"
    only = {n.strip() for n in config.pyrovae_gallery_only.split(",") if n.strip()}
    runs = app.builder.format == "html"  # doctest, linkcheck and the like show what is cached
    settings = config.pyrovae_gallery_examples
    order = list(settings)  # the order of pyrovae_gallery_examples, then the rest by name
    scripts = sorted((p for p in examples_dir.glob("*.py") if not p.name.startswith("_")),
                     key=lambda p: (order.index(p.stem) if p.stem in order else len(order), p.stem))
    unknown = sorted(set(settings) - {p.stem for p in scripts})
    if unknown:
        logger.warning(f"pyrovae_gallery_examples names scripts that examples/ lacks: {', '.join(unknown)}",
                       type="pyrovae", subtype="gallery")
    def flags_of(script):
        return settings.get(script.stem, {}).get(mode, "" if mode == "full" else None)

    to_run = [(script, flags_of(script), cache_root / mode / script.stem) for script in scripts
              if mode != "off" and flags_of(script) is not None and runs and (not only or script.stem in only)]
    ran = run_examples(to_run, config.pyrovae_gallery_timeout, mode, config.pyrovae_gallery_jobs)
    entries = []
    for script in scripts:
        name = script.stem
        conf = settings.get(name, {})
        flags = flags_of(script)
        cache = cache_root / mode / name
        record, reason = None, ""
        if mode == "off":
            reason = "PYROVAE_DOCS_GALLERY=off"
        elif flags is None:
            reason = "no quick settings for it in docs/conf.py's pyrovae_gallery_examples"
            logger.info(f"gallery: examples/{script.name} has no quick settings: shown without running it")
        elif name in ran:
            record = ran[name]
            if record["returncode"] != 0:
                logger.warning(f"examples/{script.name} failed (status {record['returncode']}); its output: "
                               f"{cache / 'output.txt'}", type="pyrovae", subtype="gallery")
        elif (cache / "record.json").exists():
            record = json.loads((cache / "record.json").read_text())
        else:
            reason = "not among PYROVAE_DOCS_GALLERY_ONLY" if only else "nothing cached for this builder"
        output = clean_output((cache / "output.txt").read_text(errors="replace"), str(examples_dir.parent)) \
            if record else ""
        images = _sync_images(record, cache, gallery / "images" / name)
        doc = _docstring(script)
        title = conf.get("title", f"{name}.py")
        source_rel = os.path.relpath(script, gallery)
        _write_if_changed(gallery / f"{name}.rst",
                          _page(name, title, doc, source_rel, record, output, images, mode, flags or "", reason))
        entries.append({"name": name, "title": title, "summary": _first_paragraph(doc), "images": images})
    for stale in gallery.glob("*.rst"):
        if stale.stem != "index" and stale.stem not in {e["name"] for e in entries}:
            stale.unlink()
    _write_if_changed(gallery / "index.rst", _index(entries))


def setup(app):
    app.add_config_value("pyrovae_gallery_source", "../examples", "env")
    app.add_config_value("pyrovae_gallery_dir", "gallery", "env")
    app.add_config_value("pyrovae_gallery_examples", {}, "env")
    # changing these rewrites the pages that change; no need to read every page again
    app.add_config_value("pyrovae_gallery_mode", "quick", "")
    app.add_config_value("pyrovae_gallery_only", "", "")
    app.add_config_value("pyrovae_gallery_cache", "_build/.gallery-cache", "")
    app.add_config_value("pyrovae_gallery_timeout", 900, "")
    # scripts run side by side, each with cpu_count / jobs torch threads
    app.add_config_value("pyrovae_gallery_jobs", min(2, os.cpu_count() or 1), "")
    app.connect("builder-inited", generate)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
