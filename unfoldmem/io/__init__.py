r"""ROOT input and output: detector and parton trees as awkward records, written atomically."""

from unfoldmem.io.atomic import atomic_path, check_writable

__all__ = ["atomic_path", "check_writable"]
