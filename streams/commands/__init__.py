"""Sub-commands beyond the core ones, one module each.

Every module here defines ``register(sub)``, which adds its parser(s) to the
``prefstream`` sub-parsers and sets ``fn=`` to a function taking the parsed args and
returning an exit code; ``streams.commands.cli`` finds the modules itself. Raise ``CliError`` with
a message that names the fix; the CLI prints it and exits 2.
"""
from __future__ import annotations

import importlib
import pkgutil


# modules here that are not sub-commands of their own
LIBRARY = ("cli", "run")


class CliError(Exception):
    pass


def register_all(sub) -> None:
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not mod.ispkg and mod.name not in LIBRARY:  # sub-packages hold what the commands use
            importlib.import_module(f"{__name__}.{mod.name}").register(sub)
