r"""ROOT input and output: detector and parton trees as awkward records, written atomically."""

from unfoldmem.io.atomic import atomic_path, check_writable
from unfoldmem.io.events import (
    DETECTOR_TREE,
    NANOAOD,
    PARTON_TREE,
    EventWriter,
    has_tree,
    iterate_detector,
    open_tree,
    read_detector,
    read_metadata,
    read_partons,
    write_events,
)
from unfoldmem.io.partons import parton_arrays

__all__ = [
    "DETECTOR_TREE",
    "NANOAOD",
    "PARTON_TREE",
    "EventWriter",
    "atomic_path",
    "check_writable",
    "has_tree",
    "iterate_detector",
    "open_tree",
    "parton_arrays",
    "read_detector",
    "read_metadata",
    "read_partons",
    "write_events",
]
