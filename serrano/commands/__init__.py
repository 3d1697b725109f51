"""The command-line tools, one module each with a ``main(argv) -> int``.

``serrano <command>`` (:mod:`serrano.cli`) and ``python scripts/<command>.py`` both call them.
"""
