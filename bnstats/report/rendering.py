"""From a store to ``report.{ipynb,html,pdf}``: the parameters, papermill in this interpreter's kernel,
the sanitised notebook, the HTML page and the WeasyPrint PDF.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import re
import sys
import time
import tomllib
import warnings
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path, PureWindowsPath
from typing import Any

import pandas as pd

from ..stats._results import DEFAULT_SEED
from .tables import esc
from .text import MOMENT_LABELS

DEFAULT_RESULTS = "data/reference/placement-mnist1d"  # the shipped 30-seed reference study
NOTEBOOK = "report.ipynb"

#: The notebook's parameters (its ``parameters`` cell), with their defaults. ``out`` empty means
#: ``<results>/report``; ``title`` empty means one made from the sweep's name.
PARAMETERS: dict[str, Any] = {
    "results": DEFAULT_RESULTS,   # the sweep directory (a bnstats store)
    "out": "",                    # where tables/, figures/ and summary.json go
    "metric": "test_acc",         # a numeric column of the runs table
    "factor": "placement",        # the grid factor whose levels are the arms
    "baseline": "before",         # differences are arm - baseline
    "confidence_level": 0.95,     # of every interval
    "margin": None,               # equivalence margin in the metric's units (0.005 = 0.5 pp), or [low, high]
    "p_adjust": "holm",           # holm | bh | bonferroni, over all comparisons
    "diverged": "drop_pair",      # drop_pair | keep: seeds where an arm diverged (its metric is NaN)
    "n_resamples": 9999,          # bootstrap resamples (BCa) and the sign-flip budget
    "rng": DEFAULT_SEED,          # seed of every random draw (bootstrap, permutations)
    "title": "",                  # the report's title
    "moments": ["skew", "exkurt", "frac_zero"],  # moments in the moment figures (also "mean", "var")
}


def display_path(path: str | os.PathLike, *, cwd: str | os.PathLike | None = None,
                 home: str | os.PathLike | None = None) -> str:
    """A path as a report may print it: never absolute, so a report records nothing of the machine's layout.

    A relative path is kept as it was given (normalised, ``/`` separators). An absolute one becomes
    relative to the working directory when it lies inside it, else ``~/...`` when it lies inside the
    home directory, else only its last component (the runs table's sha256 identifies the store anyway).

    >>> display_path("/home/ada/proj/data/sweep", cwd="/home/ada/proj", home="/home/ada")
    'data/sweep'
    >>> display_path("/scratch/x/sweep", cwd="/home/ada/proj", home="/home/ada")
    'sweep'
    """
    text = os.fspath(path)
    p = Path(text)
    if not p.is_absolute():
        return Path(os.path.normpath(text)).as_posix()
    p = Path(os.path.normpath(text))
    for base, prefix in ((cwd if cwd is not None else os.getcwd(), ""),
                         (home if home is not None else os.path.expanduser("~"), "~/")):
        base = Path(os.path.normpath(os.fspath(base)))
        if base != Path(base.anchor) and p != base and p.is_relative_to(base):
            return prefix + p.relative_to(base).as_posix()
        if p == base:
            return "." if not prefix else "~"
    return p.name or p.as_posix()


# an absolute POSIX path (a "/" that starts a token) or a Windows drive path, up to a quote, a blank, a
# colon (as in "file.py:function") or a separator of lists
_ABS_PATH = re.compile(r"(?<![\w.~/-])/[^\s\"'<>:;,|()\[\]{}]+|\b[A-Za-z]:[\\/][^\s\"'<>:;,|()\[\]{}]*")


def scrub_paths(text: str, *, cwd: str | os.PathLike | None = None, home: str | os.PathLike | None = None) -> str:
    """``text`` with every absolute path in it replaced by :func:`display_path` of it.

    For values a report shows verbatim (the sweep's config, a dataset or model spec such as
    ``file:/data/x.npz`` or ``/src/model.py:build``), which may name absolute paths of the machine
    that made them.
    """
    def shown(m: re.Match) -> str:
        path = m.group(0)
        if path[0] != "/":  # a Windows path (recorded on another machine): its last component
            return PureWindowsPath(path).name or path
        return display_path(path, cwd=cwd, home=home)

    return _ABS_PATH.sub(shown, str(text))


def import_defaults(meta: dict[str, Any]) -> dict[str, Any]:
    """The report parameters an imported store's mapping implies (its first metric, factor, baseline).

    Empty for a bnstats sweep. :func:`render` and :class:`~bnstats.report.document.Report` use them
    where the caller did not set the parameter, so ``bnstats report DIR`` works on an import as
    ``bnstats compare DIR`` does.
    """
    if meta.get("source") != "import":
        return {}
    m = meta.get("import", {}).get("mapping", {})
    out: dict[str, Any] = {}
    metric = m.get("metric")
    if metric:
        out["metric"] = metric[0] if isinstance(metric, list | tuple) else metric
    if m.get("factor"):
        out["factor"] = m["factor"]
    if m.get("baseline") is not None:
        out["baseline"] = str(m["baseline"])
    return out


def notebook_path() -> Path:
    """The report notebook: package data (``bnstats/reports/``) first, else the source tree's ``reports/``."""
    candidates = []
    with contextlib.suppress(ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        candidates.append(Path(str(resources.files("bnstats").joinpath("reports", NOTEBOOK))))
    candidates.append(Path(__file__).resolve().parents[2] / "reports" / NOTEBOOK)
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(f"report notebook {NOTEBOOK!r} not found in: {[str(c) for c in candidates]}")


def parse_sets(items: Iterable[str]) -> dict[str, Any]:
    """``["metric=test_loss", "margin=0.005"]`` -> ``{"metric": "test_loss", "margin": 0.005}``.

    Values are TOML (``0.005``, ``[-0.003, 0.005]``, ``"007"``, ``true``); anything that is not valid
    TOML is taken as a string, so bare words need no quotes. Unknown names raise ``ValueError`` listing
    the valid ones.
    """
    out: dict[str, Any] = {}
    for text in items:
        if "=" not in text:
            raise ValueError(f"--set: expected NAME=VALUE, got {text!r}")
        name, value = (s.strip() for s in text.split("=", 1))
        if name not in PARAMETERS:
            raise ValueError(f"--set {name}: unknown parameter; valid names are: {', '.join(PARAMETERS)}")
        try:
            parsed = tomllib.loads(f"v = {value}")["v"] if value else ""
        except tomllib.TOMLDecodeError:
            parsed = value
        if name == "margin" and isinstance(parsed, str) and parsed.lower() in ("", "none", "null"):
            parsed = None
        out[name] = parsed
    return out


def check_parameters(params: dict[str, Any], runs: pd.DataFrame, factors: Sequence[str]) -> dict[str, Any]:
    """Validate the report parameters against a store; ``ValueError`` naming the field (a wrong type too)."""
    try:
        return _check_parameters(params, runs, factors)
    except TypeError as e:  # e.g. --set confidence_level=true: a usage error like any other
        raise ValueError(str(e)) from None


def _check_parameters(params: dict[str, Any], runs: pd.DataFrame, factors: Sequence[str]) -> dict[str, Any]:
    from ..stats import _validate as v

    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise ValueError(f"unknown report parameter(s) {unknown}; valid names are: {', '.join(PARAMETERS)}")
    p = {**PARAMETERS, **params}
    for name in ("metric", "factor", "baseline", "p_adjust", "diverged", "title", "out", "results"):
        if not isinstance(p[name], str):
            raise TypeError(f"{name} must be a string; got {p[name]!r} ({type(p[name]).__name__})")
    moments = p["moments"]
    if (not isinstance(moments, list | tuple) or not moments or len(set(moments)) != len(moments)
            or any(m not in MOMENT_LABELS for m in moments)):
        raise ValueError(f"moments must be a non-empty list of distinct names from {list(MOMENT_LABELS)}; "
                         f"got {moments!r}")
    p["moments"] = list(moments)
    if p["metric"] not in runs.columns or not pd.api.types.is_numeric_dtype(runs[p["metric"]]) \
            or pd.api.types.is_bool_dtype(runs[p["metric"]]):
        numeric = [c for c in runs.columns if pd.api.types.is_float_dtype(runs[c])]
        raise ValueError(f"metric={p['metric']!r} is not a numeric column of the runs table; choose one of {numeric}")
    if p["factor"] not in factors:
        raise ValueError(f"factor={p['factor']!r} is not a grid factor of this sweep; factors: {list(factors)}")
    levels = sorted(map(str, runs[p["factor"]].dropna().unique()))
    if str(p["baseline"]) not in levels:
        raise ValueError(f"baseline={p['baseline']!r} is not a level of factor {p['factor']!r}; levels: {levels}")
    if len(levels) < 2:
        raise ValueError(f"factor={p['factor']!r} has a single level {levels}; nothing to compare")
    v.probability("confidence_level", p["confidence_level"])
    v.margin(p["margin"])
    v.choice("p_adjust", p["p_adjust"], v.P_ADJUST_METHODS)
    v.choice("diverged", p["diverged"], v.DIVERGED_POLICIES)
    v.integer("n_resamples", p["n_resamples"], minimum=1)
    v.integer("rng", p["rng"], minimum=0)
    return p


CSS = """
@page { size: A4; margin: 15mm 15mm 16mm 15mm;
        @bottom-center { content: counter(page) " / " counter(pages); font-size: 8pt; color: #555; } }
html { font-family: "DejaVu Sans Condensed", "DejaVu Sans", sans-serif; font-size: 9.5pt; line-height: 1.38;
       color: #111; }
body { margin: 0 auto; max-width: 180mm; padding: 0 4mm; }
h1 { font-size: 17pt; margin: 0 0 4pt 0; }
h2 { font-size: 13pt; margin: 16pt 0 5pt 0; border-bottom: 1px solid #bbb; padding-bottom: 2pt; page-break-after: avoid; }
h3 { font-size: 10.5pt; margin: 10pt 0 4pt 0; page-break-after: avoid; }
p { margin: 4pt 0; }
p.lead { font-size: 10.5pt; color: #333; }
.anchor-link { display: none; }
dl.design { display: grid; grid-template-columns: 32mm auto; gap: 2pt 8pt; margin: 4pt 0; }
dl.design dt { font-weight: bold; } dl.design dd { margin: 0; }
table.bn { border-collapse: collapse; margin: 4pt 0 10pt 0; font-size: 7.8pt; width: 100%; page-break-inside: auto; }
table.bn th { border-top: 1.2px solid #000; border-bottom: 0.8px solid #000; text-align: left; padding: 2pt 3pt;
              vertical-align: bottom; }
table.bn td { padding: 1.6pt 3pt; border-bottom: 0.4px solid #ddd; vertical-align: top; }
table.bn tr:last-child td { border-bottom: 1.2px solid #000; }
table.bn .r { text-align: right; white-space: nowrap; }
table.bn tr { page-break-inside: avoid; }
table.bn.wide { font-size: 7.2pt; }
table.bn .sub { color: #555; font-size: 92%; }
table.prov { border-collapse: collapse; font-size: 7.8pt; width: 100%; }
table.prov th { text-align: left; font-weight: normal; color: #444; padding: 1.2pt 6pt 1.2pt 0; width: 45mm; vertical-align: top; }
table.prov td { overflow-wrap: anywhere; padding: 1.2pt 0; }
pre.config { font-family: inherit; font-size: 6.8pt; line-height: 1.25; white-space: pre-wrap; background: #f6f6f6;
             padding: 4pt; columns: 2; }
.caption, figcaption { font-size: 8.2pt; color: #222; margin: 2pt 0 4pt 0; }
.files { color: #777; font-size: 7pt; }
figure { margin: 8pt 0 12pt 0; page-break-inside: avoid; }
img { max-width: 100%; height: auto; }
ol.cite li, ul.caveats li { margin: 3pt 0; }
div.warning { border: 1.2px solid #b00; background: #fff3f3; padding: 3pt 6pt; margin: 4pt 0 8pt 0; }
div.warning ul { margin: 2pt 0; padding-left: 12pt; }
span.warning, div.warning b { color: #b00; }
p.absent { font-size: 8.5pt; color: #444; font-style: italic; }
table.bn.prov-bits, table.bn.prov-code { font-size: 7.4pt; }
table.bn.prov-code td { overflow-wrap: anywhere; }
p.note { font-size: 8pt; color: #444; }
"""


class _InterpreterKernel:
    """Factory for a jupyter KernelManager that runs ``sys.executable -m ipykernel_launcher``.

    Whatever kernel specs are installed (a user-level ``python3`` may point at another interpreter),
    the notebook runs in this interpreter, the one bnstats is installed in.
    """

    @staticmethod
    def manager_class():
        from jupyter_client.kernelspec import KernelSpec
        from jupyter_client.manager import AsyncKernelManager

        class ThisInterpreterKernelManager(AsyncKernelManager):
            @property
            def kernel_spec(self):
                if self._kernel_spec is None:
                    self._kernel_spec = KernelSpec(
                        # quiet kernel logs (TCP without encryption, interrupt at shutdown); errors reach the notebook
                        argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                              "--IPKernelApp.log_level=CRITICAL"],
                        display_name=f"Python {platform.python_version()} (bnstats)", language="python",
                        resource_dir=str(Path(__file__).parent))
                return self._kernel_spec

        return ThisInterpreterKernelManager


def _sanitize(nb, results: str) -> None:
    """Strip what changes from run to run or names the machine: timestamps, durations, random cell ids,
    the output folder, and the store's path (replaced by ``results``, as :func:`display_path` shows it)."""
    nb.metadata.pop("widgets", None)
    pm = nb.metadata.get("papermill", {})
    for k in ("start_time", "end_time", "duration", "input_path", "output_path", "environment_variables"):
        pm.pop(k, None)
    if "parameters" in pm:
        pm["parameters"].pop("out", None)
        if "results" in pm["parameters"]:
            pm["parameters"]["results"] = results
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:03d}"
        cell.metadata.pop("execution", None)
        cpm = cell.metadata.get("papermill", {})
        for k in ("start_time", "end_time", "duration", "status"):
            cpm.pop(k, None)
        if "injected-parameters" in cell.metadata.get("tags", []):
            cell["source"] = re.sub(r'(?m)^out = .*$', 'out = "<out>"', cell["source"])
            cell["source"] = re.sub(r'(?m)^results = .*$', lambda _: f"results = {json.dumps(results)}", cell["source"])


def export_html(nb, title: str) -> str:
    """The executed notebook as one self-contained HTML page, code cells hidden, no scripts."""
    from nbconvert import HTMLExporter

    exp = HTMLExporter(template_name="basic", exclude_input=True, exclude_input_prompt=True,
                       exclude_output_prompt=True, anchor_link_text="")
    body, _ = exp.from_notebook_node(nb)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n"
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def write_pdf(html_text: str, path: Path, base_url: Path) -> None:
    """HTML -> PDF with WeasyPrint (offline; its CSS warnings silenced)."""
    logger = logging.getLogger("weasyprint")
    old = logger.level
    logger.setLevel(logging.ERROR)
    # fontTools (WeasyPrint's font subsetter) stamps the subset fonts with the current time unless
    # SOURCE_DATE_EPOCH is set: fix it, so the same HTML gives the same PDF bytes
    old_epoch = os.environ.get("SOURCE_DATE_EPOCH")
    os.environ["SOURCE_DATE_EPOCH"] = old_epoch or "0"
    try:
        with warnings.catch_warnings():
            # without libharfbuzz-subset, WeasyPrint 63+ warns (DeprecationWarning) and subsets fonts
            # with fontTools instead (slower, same result)
            warnings.filterwarnings("ignore", message="HarfBuzz-Subset", category=DeprecationWarning)
            import weasyprint

            weasyprint.HTML(string=html_text, base_url=str(base_url)).write_pdf(path)
    finally:
        logger.setLevel(old)
        if old_epoch is None:
            os.environ.pop("SOURCE_DATE_EPOCH", None)


def _remove_stale(out: Path) -> None:
    """Remove the tables/figures a previous render listed in its summary.json (and nothing else)."""
    old = out / "summary.json"
    if not old.is_file():
        return
    with contextlib.suppress(json.JSONDecodeError, OSError, KeyError, TypeError):
        for rel in json.loads(old.read_text()).get("files", []):
            p = (out / rel).resolve()
            if p.parent.parent == out.resolve() and p.parent.name in ("tables", "figures") and p.is_file():
                p.unlink()


def render(results: str | os.PathLike = DEFAULT_RESULTS, out: str | os.PathLike | None = None, *,
           parameters: dict[str, Any] | None = None, log: bool = False) -> Path:
    """Execute the report notebook on a sweep and write ``report.{ipynb,html,pdf}``, ``tables/``,
    ``figures/`` and ``summary.json`` into ``out`` (default ``<results>/report``). Returns ``out``.

    Raises ``FileNotFoundError`` (no sweep), ``ValueError``/``TypeError`` (a bad parameter, named) before
    anything runs, and :class:`papermill.PapermillExecutionError` if a cell fails (the executed
    notebook is still written, with the traceback).
    """
    from .. import store

    given = os.fspath(results)
    shown = display_path(given)  # what the report, summary.json and the executed notebook name
    results = Path(given).resolve()
    params = dict(parameters or {})
    for k in ("results", "out"):
        if k in params:
            raise ValueError(f"--set {k}: give the sweep directory and the output folder as arguments, not parameters")
    res = store.load(results)
    params = {**import_defaults(res.meta), **params}
    check_parameters(params, res.runs, res.factors)
    if not len(res.runs):
        raise ValueError(f"results: {str(results)!r} holds no finished runs yet")
    out = Path(out).resolve() if out else results / "report"
    if out == results or (out / "sweep.json").exists():
        raise ValueError(f"--out: {str(out)!r} is a sweep directory; write the report elsewhere (default: <sweep>/report)")
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale(out)

    import nbformat
    import papermill as pm

    nb_out = out / "report.ipynb"
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Kernel is running over TCP")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        nb = None
        try:
            # the kernel runs in this working directory, so a relative store path (kept as given: the
            # report names the store by it) means there what it means here
            nb = pm.execute_notebook(str(notebook_path()), str(nb_out),
                                     parameters={**params, "results": given if not Path(given).is_absolute()
                                                 else str(results), "out": str(out)},
                                     kernel_name="python3", language="python", progress_bar=False,
                                     request_save_on_cell_execute=False,  # write once, not after every cell
                                     cwd=os.getcwd(), kernel_manager_class=_InterpreterKernel.manager_class())
        finally:
            if nb is None and nb_out.is_file():  # failed: keep the traceback, without timestamps
                nb = nbformat.read(nb_out, as_version=4)
            if nb is not None:
                _sanitize(nb, shown)
                nbformat.write(nb, nb_out)
    t1 = time.perf_counter()
    summary = json.loads((out / "summary.json").read_text())
    title = summary.get("title", "bnstats report")
    page = export_html(nb, title)
    (out / "report.html").write_text(page)
    t2 = time.perf_counter()
    write_pdf(page, out / "report.pdf", out)
    t3 = time.perf_counter()
    if log:
        print(f"report: notebook {t1 - t0:.1f} s, HTML {t2 - t1:.1f} s, PDF {t3 - t2:.1f} s -> {out}", file=sys.stderr)
    return out
