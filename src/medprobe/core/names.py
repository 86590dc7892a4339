"""One rule each for close-match suggestions and for turning names into folder and file names."""

import difflib


def close_matches(name, known):
    """Up to three known names close to `name` (never the whole list)."""
    return difflib.get_close_matches(str(name), [str(k) for k in known], n=3, cutoff=0.5)


def did_you_mean(name, known):
    """"; did you mean 'a', 'b'?" for the close matches of `name` among `known`, else ""."""
    close = close_matches(name, known)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def printable(name):
    """A file name as text that can be written anywhere: bytes that are not UTF-8 become \\xNN (café in Latin-1: caf\\xe9)."""
    return str(name).encode("utf-8", errors="surrogateescape").decode("utf-8", errors="backslashreplace")


def slug(name):
    """A name safe as one path component and stable across bench and report: 'derma (v2)' -> 'derma_v2'.

    Runs of anything but letters, digits, '-', '.' and '_' become one '_'.

    >>> slug("efficientnet_lite0+clip_vit_b16@pre")
    'efficientnet_lite0_clip_vit_b16_pre'
    """
    out, pending = [], False
    for ch in str(name):
        if ch.isalnum() or ch in "-.":
            if pending and out:
                out.append("_")
            out.append(ch)
            pending = False
        else:
            pending = True  # '_' included, so '__' and ' _ ' collapse the same way
    return "".join(out) or "_"
