"""What every `rxgate` subcommand shares: the usage error (exit 2) and the parser that never prints a traceback."""

from __future__ import annotations

import argparse
import sys


class UsageError(Exception):
    """Exit 2: a bad option or an unreadable input, before anything is processed."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # exit 2 with a message naming the problem, never a traceback
        self.print_usage(sys.stderr)
        self.exit(2, f"rxgate: error: {message}\n")
