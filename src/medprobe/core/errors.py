"""Typed errors. Every user mistake becomes a MedprobeError whose message says what, where and how to fix it."""

from medprobe.core.names import did_you_mean


class MedprobeError(Exception):
    """Base class for errors caused by user input or the environment; the CLI prints these without a traceback.

    `command` names the medprobe command that would produce what is missing; the library does not
    speak of commands itself, the CLI appends it (`medprobe.cli.describe_error`).
    """

    def __init__(self, *args, command=None):
        super().__init__(*args)
        self.command = command


class UnknownNameError(MedprobeError):
    """A name (dataset, encoder, probe, config key) that is not known; carries close matches, not the whole list.

    The CLI adds where to list the known names; the library does not know about commands.
    """

    def __init__(self, kind, name, known=()):
        self.kind, self.name, self.known = kind, name, list(known)
        super().__init__(f"unknown {kind} {name!r}{did_you_mean(name, self.known)}")

    def __reduce__(self):
        return type(self), (self.kind, self.name, self.known)


class OutputError(MedprobeError):
    """Results cannot be written where they were asked for (a file where a folder is needed, no permission)."""


class DatasetError(MedprobeError):
    """A dataset could not be found, read or validated."""


class ImageError(DatasetError):
    """One image could not be decoded. `path` names the file."""

    def __init__(self, path, reason):
        self.path = str(path)
        self.reason = " ".join(str(reason).split())  # decoders' messages span lines; a file's reason is one line
        super().__init__(f"{path}: {reason}")

    def __reduce__(self):  # picklable with its two arguments, so it crosses from a Ray worker intact
        return type(self), (self.path, self.reason)


class UnreachableError(DatasetError):
    """Where images live cannot be read at all (an endpoint down, credentials refused): not one image's fault, so the
    command stops, naming the URL, instead of listing or skipping every image alike."""

    def __init__(self, url, reason):
        self.url, self.reason = str(url), reason
        super().__init__(f"{url}: {reason}")

    def __reduce__(self):  # as ImageError's: it crosses from a Ray worker with its own message only
        return type(self), (self.url, self.reason)


class EncoderError(MedprobeError):
    """An encoder is unknown, or its weights cannot be loaded."""


class ProbeError(MedprobeError):
    """A probe is unknown, or cannot be fitted on the given labels."""


class CacheError(MedprobeError):
    """A cache entry is corrupt or does not match what was asked for."""


class ModelError(MedprobeError):
    """A saved probe is missing, damaged, tampered with, or fitted on an encoder this installation lacks."""


class ClusterError(MedprobeError):
    """Ray is not installed, a cluster cannot be reached, or a distributed job lost work it could not redo."""


class BenchConfigError(MedprobeError):
    """The bench config file is missing, unreadable, or names something unknown."""


class ComparisonError(MedprobeError):
    """Two results cannot be compared pairwise: different test images, labels, task or label names."""


class ServeError(MedprobeError):
    """`medprobe serve` cannot start as asked (an open address without a token), or an upload cannot be answered;
    `status` is the HTTP status an upload's error is answered with."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status
