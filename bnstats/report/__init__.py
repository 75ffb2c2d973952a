"""The report: execute ``reports/report.ipynb`` with papermill, export HTML and PDF, write tables and figures.

::

    render(results, out)        -> Path   execute the notebook, then report.html, report.pdf, report.ipynb
    Report(results, out, **params)        what the notebook's cells share (store, parameters, files, blocks)
    cite_sentence(row, ...)     -> str    one ready sentence per comparison ("How to cite")
    pairing_certificate(runs, factor)     do all arms of a seed share init_hash / order_hash?
    store_hash(runs)            -> str    sha256 of the runs table contents
    findings_markdown(summary)  -> str    the README's findings, from a report's summary.json

The notebook only reads the store and calls :mod:`bnstats.stats`, and it is the one place where the
report's order is written (design, headline, figures, How to cite, Methods, caveats, provenance). This
package holds what the notebook needs besides, one role per module:

- :mod:`~bnstats.report.text`: words and numbers for reading. Labels, number formatting (rounding
  happens only here, where a person reads), the "How to cite" sentence (its claim follows the verdict),
  the headline's footnote, the caveats derived from the design and grouped per comparison, the phrases
  of the design and Methods blocks. Pure functions; no store, no files. Caveats are lists; a frame
  cell is read with :func:`bnstats.stats.caveat_list`.
- :mod:`~bnstats.report.tables`: HTML tables (written by hand: deterministic, no random ids), booktabs
  TeX for ``\\input``, CSV with every digit, the README's Markdown headline (:func:`headline_markdown`)
  and the terminal's text (:func:`compare_text` and :func:`plan_text`, what ``bnstats compare`` and
  ``bnstats plan`` print).
- :mod:`~bnstats.report.figures`: every figure (a function of the :class:`Report` and the frames it
  plots), the plotting style, the PNG + PDF files without dates or software stamps, and the forked
  processes that draw them (``FIGURE_WORKERS``, overridden by ``BNSTATS_REPORT_WORKERS``; 1 draws in
  the kernel). The jobs reach the workers through fork (a global of that module), so only
  ``figures._figure_job`` and an index are pickled: a builder may be any callable.
- :mod:`~bnstats.report.document`: :class:`Report`, which loads the store, validates the parameters,
  writes the tables and figures it is handed (numbered, captioned) and composes the text blocks as
  HTML; and what the report certifies about its inputs (:func:`pairing_certificate`,
  :func:`store_hash`, ``software_versions``).
- :mod:`~bnstats.report.rendering`: the parameters (:data:`PARAMETERS`, the same names as the
  notebook's ``parameters`` cell and ``bnstats report --set NAME=VALUE``; :func:`parse_sets`,
  :func:`check_parameters`), papermill in this interpreter's kernel, the sanitised notebook, the HTML
  page, the WeasyPrint PDF and :func:`render`, which runs them in that order; and how a path may be
  printed (:func:`display_path`, never absolute).
- :mod:`~bnstats.report.readme`: the README's reference section from a rendered report's
  ``summary.json`` and its store (``python -m bnstats.report.readme --write README.md``).

Imports go one way, so there is no cycle: ``text`` <- ``tables`` <- ``rendering`` <- ``document`` and
``text`` <- ``figures`` <- ``document``; nothing imports ``document`` at import time (``figures`` names
:class:`Report` for type checking only; ``readme`` imports it inside the function that reads a store). This module only re-exports the names the notebook, the CLI
and the tests use: to replace one in a test, patch the module that calls it (``render`` calls
``bnstats.report.rendering.notebook_path``), not this one.

Where the notebook lives: ``reports/report.ipynb`` in the source tree, shipped inside the package as
``bnstats/reports/report.ipynb`` (``bnstats/reports`` is a symlink to ``../reports``, so the
package-data glob copies the file into wheels). :func:`notebook_path` looks in the package first,
then in the source tree, so editable and non-editable installs both find it.

Same store, parameters and store name (the path as given, or as :func:`display_path` shows an absolute
one: the report records no absolute path) give the same bytes of ``report.pdf``, ``report.html``,
``report.ipynb``, ``tables/*``, ``figures/*`` and ``summary.json``, in any output folder, from the same
commit (the report names it): the bootstrap uses an explicit
``rng``, figures are saved without dates or software stamps, the executed notebook is stripped of
timestamps and random cell ids, and the PDF's subset fonts get a fixed timestamp
(``SOURCE_DATE_EPOCH``, see :func:`~bnstats.report.rendering.write_pdf`).
``tests/test_report.py::test_rendering_twice_gives_identical_bytes`` checks it.
"""

from .document import Report, pairing_certificate, store_hash
from .figures import (
    VERDICT_COLORS,
    association_figure,
    association_frames,
    differences_figure,
    forest_figure,
    learning_curves_figure,
    moments_figure,
    paired_seed_figure,
    probe_moments,
    setup_plotting,
)
from .rendering import PARAMETERS, check_parameters, display_path, notebook_path, parse_sets, render
from .tables import compare_text, esc, format_for_reading, headline_markdown, plan_text
from .text import (
    VERDICT_MEANINGS,
    MetricDisplay,
    ci,
    cite_sentence,
    decision_interval,
    design_caveats,
    fmt_p,
    grouped_caveats,
    headline_note,
    num,
)

__all__ = [
    "PARAMETERS", "VERDICT_COLORS", "VERDICT_MEANINGS", "MetricDisplay", "Report", "association_figure",
    "association_frames", "check_parameters", "ci", "cite_sentence", "compare_text", "decision_interval",
    "design_caveats", "differences_figure", "display_path", "esc", "findings_markdown", "fmt_p", "forest_figure",
    "format_for_reading", "grouped_caveats", "headline_markdown", "headline_note", "learning_curves_figure",
    "moments_figure", "notebook_path", "num", "paired_seed_figure", "pairing_certificate", "parse_sets", "plan_text",
    "probe_moments", "render", "setup_plotting", "store_hash",
]


def __getattr__(name: str):
    # bnstats.report.readme is also run as a script (python -m bnstats.report.readme): imported on first use,
    # so that running it does not find it imported already
    if name == "findings_markdown":
        from .readme import findings_markdown

        return findings_markdown
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
