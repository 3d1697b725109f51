#!/usr/bin/env python3
"""Generate docs/isa.md, the ISA reference, from hw/isa.py (the single definition).

A thin wrapper kept so that ``python scripts/gen_isa_doc.py`` works as documented; the code is
:mod:`serrano.commands.gen_isa_doc` (also ``serrano gen-isa-doc``).
"""

from serrano.commands.gen_isa_doc import main

if __name__ == "__main__":
    raise SystemExit(main())
