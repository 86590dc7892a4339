"""Files at URLs -- s3://, gs://, abfs://, file://, anything fsspec can open -- beside local paths.

Credentials and endpoints come from each filesystem's standard environment (for S3: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL for a MinIO or other S3-compatible server, ~/.aws, an instance role).
A local path is never a URL: `Path` objects and strings without "://" keep their plain, pathlib meaning.
"""

import posixpath

from medprobe.core.errors import ImageError, MedprobeError, UnreachableError

INSTALL_HINT = "reading {scheme}:// URLs needs fsspec and its {scheme} filesystem: pip install 'medprobe[cloud]'"


def is_url(location):
    """True for 's3://bucket/key' and the like; False for a Path or a plain path string."""
    return isinstance(location, str) and "://" in location


def join(folder, relative):
    """`relative` (a manifest's path column) resolved against `folder`, a URL; a URL or absolute path stays as given.

    >>> join("s3://bucket/ham", "../images/a.jpg")
    's3://bucket/images/a.jpg'
    """
    if is_url(relative):
        return relative
    scheme, rest = folder.split("://", 1)
    bucket, _, key = rest.partition("/")
    # A manifest in a bucket names files in that bucket: "/x.jpg" is the bucket's root, ".." never leaves it.
    joined = posixpath.normpath(posixpath.join("/" + key, relative)).lstrip("/")
    return f"{scheme}://{bucket}/{joined}"


def parent(url):
    """The folder of a URL: 's3://bucket/a/b.csv' -> 's3://bucket/a'."""
    return url.rstrip("/").rsplit("/", 1)[0]


def filesystem(url):
    """(fsspec filesystem, path inside it) for a URL; a missing filesystem package is said in one line."""
    try:
        import fsspec
        from fsspec.core import url_to_fs
    except ImportError as e:
        raise MedprobeError(INSTALL_HINT.format(scheme=url.split("://", 1)[0])) from e
    try:
        return url_to_fs(url)
    except ImportError as e:  # fsspec knows the scheme, its filesystem package is not installed (s3fs, gcsfs, adlfs)
        raise MedprobeError(INSTALL_HINT.format(scheme=url.split("://", 1)[0]) + f" ({e})") from e
    except ValueError as e:  # an unknown scheme
        raise MedprobeError(f"{url}: {e}; known schemes: {', '.join(sorted(fsspec.available_protocols())[:12])}, ...") from e


def read_bytes(url):
    """The whole object at `url`; errors keep their type (FileNotFoundError, PermissionError, OSError)."""
    fs, path = filesystem(url)
    return fs.cat_file(path)


def read_image_bytes(url):
    """`read_bytes` for an image: a missing object is that image's own problem (an ImageError, listed or skipped with
    the other unreadable files); anything else (endpoint down, credentials refused) would fail every image alike, so it
    stops the command in one line naming the URL (UnreachableError), and --on-error skip never drops images for it."""
    try:
        return read_bytes(url)
    except FileNotFoundError as e:
        raise ImageError(url, reason(e)) from e
    except Exception as e:  # noqa: BLE001 -- each filesystem (s3fs, gcsfs, ...) raises its own types
        raise UnreachableError(url, reason(e)) from e


def reason(error):
    """One line saying why a URL could not be read, for an error message that names the URL."""
    if isinstance(error, FileNotFoundError):
        return "not found"
    if isinstance(error, PermissionError):
        return f"access denied ({_first_line(error)}); check the credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE, ...)"
    return f"cannot read it ({type(error).__name__}: {_first_line(error)}); check the endpoint (AWS_ENDPOINT_URL) and the network"


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
