"""Serrano's FPGA flows: synthesis, place and route, netlist passes, reports, boards, sweeps.

Everything here runs tools (YoWASP's Yosys and nextpnr) on the gateware of
:mod:`serrano.hw`; nothing in ``hw/`` runs a tool or writes a file.
"""
