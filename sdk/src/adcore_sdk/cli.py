"""The ``adcore-sdk`` command line: ``adcore-sdk new NAME [--directory DIR]``."""

from __future__ import annotations

import argparse
import sys

from adcore_sdk.scaffold import PluginNames, create_plugin


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="adcore-sdk", description="Tools for writing adcore detector plugins.")
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="write a complete, working plugin package")
    new.add_argument("name", help="the detector name, e.g. texture-knn (package: adcore-texture-knn)")
    new.add_argument("--directory", default=".", help="where to create the package folder (default: here)")
    args = parser.parse_args(argv)

    try:
        path = create_plugin(args.name, args.directory)
    except (ValueError, FileExistsError) as exc:
        print(f"adcore-sdk: error: {exc}", file=sys.stderr)
        return 2
    names = PluginNames.from_name(args.name)
    print(f"created {path}")
    print("next:")
    print(f"  pip install -e '{path}[test]'")
    print(f"  adcore list-plugins            # shows {names.distribution} with detector {names.detector}")
    print(f"  pytest {path}                  # the conformance kit and the model's tests")
    print(f"  adcore fit --model {names.detector} --data mvtec:PATH --output runs/{names.detector}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
