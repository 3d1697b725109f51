#!/usr/bin/env python3
"""Which activation precision a BERT encoder needs (fake-quant embeddings against float).

A thin wrapper kept so that ``python scripts/precision_study.py`` works as documented; the code is
:mod:`serrano.commands.precision_study` (also ``serrano precision-study``).
"""

from serrano.commands.precision_study import main

if __name__ == "__main__":
    raise SystemExit(main())
