"""CLI verbs, one module each, discovered by :func:`cxrguide.cli.build_parser`.

A module here defines ``register(subparsers)`` which adds its parser and sets ``func``. Keep
modules thin: parse flags into a config dataclass and call the library function.
"""
