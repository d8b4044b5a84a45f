"""Entry point of `harness` and `python -m harness`.

It lives apart from harness.cli so that a Ctrl-C while the command line is still loading ends
quietly with exit code 130, as it does once a command runs, instead of with a traceback."""

import sys


def main() -> None:
    try:
        from harness.cli import app

        app()  # Typer builds the command line from the signatures here, before any command runs
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
