"""Serrano's FPGA flows: synthesis, place and route, netlist passes, reports, boards, sweeps.

Everything here runs tools (YoWASP's Yosys and nextpnr) on the gateware of
:mod:`serrano.hw`; nothing in ``hw/`` runs a tool or writes a file.

Modules: ``tools`` (finding and running the tools), ``designs`` (what is synthesized),
``devices`` (targets, pre-flight fit check), ``parse`` (tool outputs), ``yosys`` (scripts),
``netlist`` (passes between Yosys and nextpnr), ``pnr`` (nextpnr, seed sweeps), ``report``
(the one report and its markdown), ``flow`` (:func:`~serrano.flows.flow.run_flow`),
``sweep`` (one sweep point), ``boards`` (board bitstreams).
"""
