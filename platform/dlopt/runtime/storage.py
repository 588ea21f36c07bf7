"""Ray's storage for a sweep: a local folder or a URI (`s3://bucket/prefix`), and every read
or write dlopt itself makes there (docs/architecture.md, "Ray storage").

Tune writes its experiment state, trials' checkpoints and results through its own pyarrow
filesystem; dlopt reads that directory too: `--resume` finds the newest sweep and extension
directories and checks `tuner.pkl` (`subdirs`, `has_file`), registration and the test report
copy a checkpoint out (`local_copy`), and a checkpoint Ray names by its filesystem path
(`bucket/prefix/...`) becomes a URI again before MLflow records it (`full_uri`). All of it
goes through pyarrow.fs, so a local folder and an S3-compatible store behave alike.

An S3 URI takes pyarrow's own options as its query (`?endpoint_override=host:9000&
scheme=http`, `region=`), which travel with the URI wherever Ray sends it (trials included).
pyarrow does not read `AWS_ENDPOINT_URL` (apache/arrow#49643): `resolve` writes the endpoint
the standard variables name into the URI, so MinIO or another S3-compatible server is
reached the way the AWS CLI reaches it. Credentials stay in the environment
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY; Ray propagates them to trials) and are refused in
the URI, which Tune pickles into its state and MLflow tags carry.

pyarrow only: no Ray, no MLflow (the driver checks a URI before Ray starts).
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

Location = Union[Path, str]  # an absolute local folder, or a URI

# the query options pyarrow.fs.FileSystem.from_uri accepts in an s3:// URI (pyarrow 25)
S3_QUERY = ("region", "scheme", "endpoint_override", "allow_bucket_creation",
            "allow_bucket_deletion")
# the standard variables naming an S3-compatible endpoint (the AWS CLI's and SDKs'), in order
ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
# what the check before Ray starts waits for an answer (a cheap HEAD of the bucket)
CHECK_TIMEOUT_S = 5.0


class StorageProblem(ValueError):
    """The storage location cannot work (found before Ray starts); one line."""


def is_remote(location: Location) -> bool:
    return "://" in str(location)


def uri_problems(uri: str) -> list[str]:
    """What is wrong with a storage URI, without touching the network (one line each)."""
    parts = urlsplit(uri)
    if parts.scheme != "s3":
        return []  # gs://, hdfs://, ...: pyarrow's to judge when the filesystem is made
    problems = []
    if "@" in parts.netloc:
        problems.append(f"{redact(uri)}: credentials in the URI would be saved in Tune's state "
                        "and MLflow; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead")
    if not parts.hostname:
        problems.append(f"{redact(uri)}: no bucket (s3://BUCKET/PREFIX)")
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in S3_QUERY:
            problems.append(f"{redact(uri)}: unknown option {key!r} (pyarrow's S3 URIs take "
                            f"{', '.join(S3_QUERY)})")
        elif key == "scheme" and value not in ("http", "https"):
            problems.append(f"{redact(uri)}: scheme={value!r} (http or https)")
    return problems


def redact(uri: str) -> str:
    """The URI without a user:password part (what messages show)."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def endpoint_query(url: str) -> dict[str, str]:
    """`http://host:9000` (an AWS_ENDPOINT_URL value) as pyarrow's URI options."""
    parts = urlsplit(url if "://" in url else f"https://{url}")
    if not parts.netloc:
        raise StorageProblem(f"endpoint {url!r} has no host")
    return {"endpoint_override": parts.netloc + parts.path.rstrip("/"),
            "scheme": parts.scheme or "https"}


def resolve(uri: str, env: Mapping[str, str] = os.environ) -> str:
    """The URI Ray and dlopt use: checked (StorageProblem), and for s3:// without its own
    `endpoint_override`, the endpoint of AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL added."""
    problems = uri_problems(uri)
    if problems:
        raise StorageProblem(problems[0])
    parts = urlsplit(uri)
    if parts.scheme != "s3":
        return uri
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    endpoint = next((env[v] for v in ENDPOINT_VARS if env.get(v)), None)
    if endpoint and "endpoint_override" not in query:
        query = {**endpoint_query(endpoint), **query}  # the URI's own scheme= wins
    return urlunsplit(parts._replace(path=parts.path.rstrip("/"), query=urlencode(query, safe=":/")))


# ------------------------------------------------------------------ paths and URIs
def filesystem(location: Location):
    """(pyarrow filesystem, path inside it) for a local folder or a storage URI."""
    import pyarrow.fs  # deferred on purpose: `dlopt validate` never needs it

    if not is_remote(location):
        return pyarrow.fs.LocalFileSystem(), str(location)
    return pyarrow.fs.FileSystem.from_uri(str(location))


def child(location: Location, name: str) -> Location:
    """The directory `name` under `location`: a Path under a folder, a URI under a URI (its
    query kept)."""
    if not is_remote(location):
        return Path(location) / name
    parts = urlsplit(str(location))
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/" + name))


def full_uri(location: Location, fs_path: Optional[str]) -> Optional[str]:
    """A path Ray gives inside the storage's filesystem (`bucket/prefix/...`, what
    `Checkpoint.path` holds) as a URI with the storage's scheme and options; a local path or
    a URI as it is."""
    if not fs_path or not is_remote(location) or "://" in fs_path:
        return fs_path
    parts = urlsplit(str(location))
    uri = f"{parts.scheme}://{fs_path.lstrip('/')}"
    return f"{uri}?{parts.query}" if parts.query else uri


def subdirs(location: Location) -> list[str]:
    """The names of the directories directly under `location` (none if it is not there)."""
    import pyarrow.fs

    fs, root = filesystem(location)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pyarrow.fs.FileType.Directory)


def restorable(location: Location, match: Callable[[str], Any]) -> list[str]:
    """The directories under `location` whose name `match`es and that hold a Tune state
    `Tuner.restore` can read (`tuner.pkl`)."""
    return [d for d in subdirs(location) if match(d) and has_file(child(location, d), "tuner.pkl")]


def base_name(location: Location) -> str:
    """The last part of a local directory's path or of a URI's path."""
    if not is_remote(location):
        return Path(location).name
    return urlsplit(str(location)).path.rstrip("/").rsplit("/", 1)[-1]


def has_file(location: Location, name: str) -> bool:
    """`location/name` is a file."""
    import pyarrow.fs

    fs, root = filesystem(location)
    return fs.get_file_info(f"{root.rstrip('/')}/{name}").type == pyarrow.fs.FileType.File


def local_copy(checkpoint: str) -> Path:
    """A checkpoint directory on local disk: a local path as it is, a URI's files copied to
    a new temporary directory."""
    if not is_remote(checkpoint):
        return Path(checkpoint)
    import pyarrow.fs

    fs, path = filesystem(checkpoint)
    local = Path(tempfile.mkdtemp(prefix="dlopt-ckpt-"))
    pyarrow.fs.copy_files(path, str(local), source_filesystem=fs)
    return local


# ------------------------------------------------------------------ before Ray starts
def check_reachable(location: Location, timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """Raise StorageProblem (one line) when an s3:// location's bucket cannot be reached
    now: no endpoint answering, credentials refused, no such bucket. One HEAD request with a
    short timeout and no retries, where the URI names an endpoint or a region; AWS with its
    region unknown and other schemes are left to pyarrow and Ray."""
    if urlsplit(str(location)).scheme != "s3":
        return
    import pyarrow.fs

    parts = urlsplit(str(location))
    query = dict(parse_qsl(parts.query))
    options = {k: query[k] for k in ("region", "scheme", "endpoint_override") if k in query}
    if "endpoint_override" not in options and "region" not in options:
        return  # AWS itself, region unknown: finding it is not one cheap request (Ray's to do)
    shown = redact(str(location))
    try:
        fs = pyarrow.fs.S3FileSystem(
            connect_timeout=timeout_s, request_timeout=timeout_s,
            retry_strategy=pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=1), **options)
        info = fs.get_file_info(parts.hostname)
    except (OSError, ValueError) as err:
        detail = re.sub(r"\s+", " ", str(err)).strip()[:300]
        raise StorageProblem(f"storage {shown} is not reachable ({detail}); set its endpoint "
                             "(AWS_ENDPOINT_URL or ?endpoint_override=HOST:PORT&scheme=http) "
                             "and credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)") from None
    if info.type != pyarrow.fs.FileType.Directory:
        where = options.get("endpoint_override", "AWS")
        raise StorageProblem(f"storage {shown}: bucket {parts.hostname!r} does not exist at "
                             f"{where}; create it first")


def journal_dir(location: Location, tune_name: str, home: Optional[Path] = None) -> Path:
    """Where the driver journals its MLflow writes (dlopt.tracking.journal, appended and
    fsynced per event: local disk). Beside Tune's state in local storage; for a URI, a
    folder on this machine named after it (XDG_CACHE_HOME, default ~/.cache), where a
    `--resume` on this machine finds it."""
    if not is_remote(location):
        return Path(location) / tune_name
    parts = urlsplit(str(location))
    cache = home or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    where = re.sub(r"[^A-Za-z0-9._-]", "_", f"{parts.hostname}{parts.path}".strip("/"))
    return cache / "dlopt" / "journals" / parts.scheme / where / tune_name
