"""The `keras-secondorder` command: `keras-secondorder spectrum MODEL --data ...`."""

import sys

from keras_secondorder.spectrum import cli as spectrum_cli

COMMANDS = {"spectrum": spectrum_cli.main}


def main(argv=None):
    """Runs the command named first in `argv` (default `sys.argv[1:]`) on the rest."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        sys.exit(f"usage: keras-secondorder {{{','.join(COMMANDS)}}} ...; received "
                 f"{' '.join(argv) or 'no command'}. Try: keras-secondorder spectrum --help")
    COMMANDS[argv[0]](argv[1:])
