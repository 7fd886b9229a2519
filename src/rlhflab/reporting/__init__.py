"""Reports written from a run's files (never a model): the run report, the model card and the comparison report.

One set of helpers serves all three:

- ``rundir``: reading a run directory back (config, JSONL files, the evaluation summary, metric series);
- ``text``: Markdown tables and cells, number and duration formats;
- ``page``: the HTML frame, shared style rules, tables, score colours and embedded PNGs;
- ``plots``: the ``Plot`` type and matplotlib figure helpers;
- ``describe`` and ``tables``: sentences about a config and the before/after evaluation tables.

``run_report`` (``report.md``/``report.html``), ``model_card`` (``final/README.md``) and ``hub`` (``rlhflab push``)
build on them; the comparison report is rendered by :mod:`rlhflab.compare.render`. Their historical import paths,
:mod:`rlhflab.report` and :mod:`rlhflab.modelcard`, re-export the same names.
"""
