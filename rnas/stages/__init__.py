"""Stage entry points: each module has ``add_arguments(parser)`` and ``run(args) -> int``.

They parse, call the library, and write their outputs; Snakemake rules and dvc stages call
them through the ``rnas`` command (``rnas <stage> --params params.yaml ...``)."""
