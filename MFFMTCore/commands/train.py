"""`mffmt train` (being built: see the open issues)."""

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="(not built yet)")
    parser.set_defaults(run=lambda args: parser.error("not built yet"))
