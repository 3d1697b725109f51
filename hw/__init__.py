"""Serrano gateware: configuration, ISA and the Amaranth components."""

from .config import AcceleratorConfig

__all__ = ["AcceleratorConfig"]
