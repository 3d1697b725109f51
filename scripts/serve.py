#!/usr/bin/env python3
"""Serve sentence embeddings over HTTP with dynamic batching (OpenAI's embeddings API).

A thin wrapper; the code is :mod:`serrano.commands.serve` (also ``serrano serve``).
"""

from serrano.commands.serve import main

if __name__ == "__main__":
    raise SystemExit(main())
