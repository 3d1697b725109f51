"""Serrano: an open, parameterized int8 inference accelerator in Amaranth HDL.

The package has three parts, each in its own folder of the repository:

- :mod:`serrano.hw` (``hw/``): gateware only, the configuration, the ISA and the Amaranth
  components;
- :mod:`serrano.sim` (``sim/``): the golden model, the simulation backends and the runtime;
- :mod:`serrano.flows` (``flows/``): the FPGA flows (Yosys, nextpnr, reports, boards, sweeps).

The main API is re-exported here:

>>> import serrano
>>> acc = serrano.Accelerator(serrano.AcceleratorConfig(rows=4, cols=4), backend="golden")
>>> model = serrano.load_model("path/to/hf-bert-dir", backend="golden")  # doctest: +SKIP
>>> model.embed(["A sentence.", "Another one."]).shape                  # doctest: +SKIP
(2, 384)
"""

from .hw.config import AcceleratorConfig
from .sim.model import Model, load_model
from .sim.runtime import Accelerator, Stats

__all__ = ["AcceleratorConfig", "Accelerator", "Stats", "Model", "load_model"]
