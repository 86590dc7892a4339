import difflib


def unknown_name_message(kind, name, known):
    """'unknown encoder 'x'; did you mean ...' with close matches instead of the whole list."""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {kind} {name!r}{hint} (run `medprobe {kind}s` to list them)"
