"""The comparison report: tables (Markdown) and plots from every eval.json."""
