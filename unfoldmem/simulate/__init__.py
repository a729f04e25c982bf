r"""Simulation: parton-level generation, the parametric detector and the Pythia 8 chain."""

from unfoldmem.simulate.detector import (
    REASONS,
    DetectorOutput,
    ObjectBlock,
    ParametricDetector,
    object_kind,
    partons_to_tensors,
)
from unfoldmem.simulate.generator import (
    EventGenerator,
    GenerationSummary,
    PartonChunk,
    generate_file,
    records,
)
from unfoldmem.simulate.selection import select

__all__ = [
    "REASONS",
    "DetectorOutput",
    "EventGenerator",
    "GenerationSummary",
    "ObjectBlock",
    "ParametricDetector",
    "PartonChunk",
    "generate_file",
    "object_kind",
    "partons_to_tensors",
    "records",
    "select",
]
