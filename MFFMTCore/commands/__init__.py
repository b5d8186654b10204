"""One module per ``mffmt`` command, each with ``add_parser(subparsers)`` (which sets ``run``)."""
