"""Entry point of `harness` and `python -m harness`.

It lives apart from harness.cli so that a Ctrl-C while the command line is still loading ends
quietly with exit code 130, as it does once a command runs, instead of with a traceback. A press
that lands inside an import can leave a library half-loaded, and the next use of it fails with an
error of its own (numpy's lazy submodules recurse until RecursionError); once Ctrl-C was pressed,
such an error is the interrupt's doing and ends the same way."""

import signal
import sys

from harness.launch.procs import interrupted, on_ctrl_c


def main() -> None:
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where SIGINT is ignored
        signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        from harness.cli import app

        app()  # Typer builds the command line from the signatures here, before any command runs
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception:
        if interrupted():
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
