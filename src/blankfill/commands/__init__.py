"""One module per ``blankfill`` verb: ``configure(parser)`` and ``run(args) -> int``."""
