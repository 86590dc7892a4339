"""Warnings silenced or recorded while other threads run.

Python keeps one list of warning filters for the whole process, and `warnings.catch_warnings` saves and restores all of
it. Two threads inside it at once restore each other's state: a warning meant to be silenced reaches the terminal, and
the filters stay changed after both have left. The scan reads image headers in four threads, so every medprobe change of
the filters goes through `caught_warnings`, which holds one lock for it.
"""

import threading
import warnings
from contextlib import contextmanager

_FILTERS = threading.RLock()  # re-entrant: a caller already inside may call code that catches warnings too


@contextmanager
def caught_warnings(action="ignore", category=Warning, record=False):
    """`warnings.catch_warnings(record=record)` with `action` for `category`, one thread at a time.

    >>> with caught_warnings("always", record=True) as caught:
    ...     warnings.warn("kept")
    >>> [str(w.message) for w in caught]
    ['kept']
    """
    with _FILTERS, warnings.catch_warnings(record=record) as caught:
        warnings.simplefilter(action, category)
        yield caught
