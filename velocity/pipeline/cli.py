"""The `velocity` command: one entry point for the pipeline and the trained models.

Each sub-command lives in its own module with `add_arguments(parser)` and `run(args) -> int`;
modules keep heavy imports (torch, prefect) inside `run`, so `velocity --help` stays quick.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "predict": ("velocity.pipeline.predict", "replace the velocities of MIDI files (or folders of them) with the model's"),
    "generate": ("velocity.pipeline.generate", "sample a performance with the Performance RNN"),
    "run": ("velocity.pipeline.flows", "run the DVC pipeline once as a Prefect flow"),
    "serve": ("velocity.pipeline.serve", "serve the pipeline flow on a schedule (needs a Prefect server)"),
    "sweep": ("velocity.pipeline.sweep", "run a grid of DVC experiments and compare their metrics"),
    "studio": ("velocity.pipeline.studio", "a page in the browser: drop MIDI files, see and hear them humanized, download them"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="velocity", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            continue  # a command that is not built yet
        sub = commands.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
