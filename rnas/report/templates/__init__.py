"""The report's Jinja2 templates (package data): ``report.html.j2`` renders report.html
(:func:`rnas.report.document.to_html`). A package of its own, so that the workflow counts the
templates as code inputs of the report stage only (:func:`rnas.dag.code_inputs`), not of every
stage that imports something from :mod:`rnas.report`."""
