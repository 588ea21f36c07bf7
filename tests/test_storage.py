"""Ray storage locations (dlopt.runtime.storage): s3:// URIs checked and given their
endpoint before Ray starts, Ray's filesystem paths turned back into URIs, and the reads
`--resume` makes, through pyarrow, on a local folder. No Ray, no S3 server."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from dlopt.runtime import storage
from dlopt.runtime.storage import StorageProblem


def test_an_s3_uri_gets_the_endpoint_the_standard_variables_name():
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000"}
    assert storage.resolve("s3://bkt/runs/", env) == \
        "s3://bkt/runs?endpoint_override=127.0.0.1:9000&scheme=http"
    # the S3-specific variable wins, as in the AWS CLI and SDKs
    env = {"AWS_ENDPOINT_URL": "http://a:1", "AWS_ENDPOINT_URL_S3": "https://minio.lan:9000"}
    assert storage.resolve("s3://bkt/runs", env) == \
        "s3://bkt/runs?endpoint_override=minio.lan:9000&scheme=https"
    # the URI's own endpoint is kept; no variable: the URI as given; other schemes as given
    own = "s3://bkt/runs?endpoint_override=h:1&scheme=http"
    assert storage.resolve(own, env) == own
    assert storage.resolve("s3://bkt/runs?region=eu-west-1", {}) == "s3://bkt/runs?region=eu-west-1"
    assert storage.resolve("gs://b/p?x=1", env) == "gs://b/p?x=1"


@pytest.mark.parametrize("uri, says", [
    ("s3://KEY:hunter2@bkt/runs", "credentials in the URI"),
    ("s3:///runs", "no bucket"),
    ("s3://bkt/runs?endpoint=h:1", "unknown option 'endpoint'"),
    ("s3://bkt/runs?scheme=ftp", "scheme='ftp'"),
])
def test_an_s3_uri_that_cannot_work_is_refused_in_one_line(uri, says):
    with pytest.raises(StorageProblem) as err:
        storage.resolve(uri, {})
    assert says in str(err.value) and "\n" not in str(err.value)
    assert "hunter2" not in str(err.value)


def test_ray_filesystem_paths_become_uris_with_the_storage_options():
    s3 = "s3://bkt/runs?endpoint_override=h:1&scheme=http"
    assert storage.full_uri(s3, "bkt/runs/sw/t/checkpoint_000002") == \
        "s3://bkt/runs/sw/t/checkpoint_000002?endpoint_override=h:1&scheme=http"
    assert storage.full_uri("s3://bkt/runs", "bkt/runs/x") == "s3://bkt/runs/x"
    assert storage.full_uri(s3, "s3://other/x") == "s3://other/x"  # already a URI
    assert storage.full_uri("/data/rr", "/data/rr/sw/t/c") == "/data/rr/sw/t/c"  # local
    assert storage.full_uri(s3, None) is None
    assert storage.child(s3, "sw-20260101-000000") == \
        "s3://bkt/runs/sw-20260101-000000?endpoint_override=h:1&scheme=http"
    assert storage.child(Path("/data/rr"), "sw") == Path("/data/rr/sw")


def test_resume_reads_the_storage_directory_through_pyarrow(tmp_path):
    from dlopt.driver.extend import latest_extension_dir
    from dlopt.driver.sweep import latest_sweep_dir

    assert storage.subdirs(tmp_path / "none") == []
    for name in ("t-20260101-000000", "t-20260102-000000", "t-20260103-000000",
                 "t-20260102-000000-x3-20260104-000000", "t-20260102-000000-x2-20260105-000000",
                 "other-20260109-000000"):
        (tmp_path / name).mkdir()
    for name in ("t-20260101-000000", "t-20260102-000000", "t-20260102-000000-x3-20260104-000000",
                 "t-20260102-000000-x2-20260105-000000", "other-20260109-000000"):
        (tmp_path / name / "tuner.pkl").write_bytes(b"")
    (tmp_path / "t-20260104-000000.txt").write_text("")  # a file, not a sweep
    # the newest restorable sweep (t-...03 has no tuner.pkl), then its newest extension
    assert latest_sweep_dir(tmp_path, "t") == tmp_path / "t-20260102-000000"
    assert latest_extension_dir(tmp_path, "t-20260102-000000") == \
        tmp_path / "t-20260102-000000-x2-20260105-000000"
    assert latest_extension_dir(tmp_path, "t-20260101-000000") is None
    assert storage.has_file(tmp_path / "t-20260101-000000", "tuner.pkl")
    assert not storage.has_file(tmp_path / "t-20260103-000000", "tuner.pkl")
    assert storage.base_name("s3://b/p/t-20260101-000000?scheme=http") == "t-20260101-000000"
    assert storage.base_name(tmp_path / "t-20260101-000000") == "t-20260101-000000"


def test_journal_of_a_remote_sweep_is_on_local_disk(tmp_path):
    assert storage.journal_dir(tmp_path, "sw") == tmp_path / "sw"
    where = storage.journal_dir("s3://bkt/runs?endpoint_override=h:1", "sw", home=tmp_path)
    assert where == tmp_path / "dlopt" / "journals" / "s3" / "bkt_runs" / "sw"


def test_unreachable_endpoint_is_refused_in_one_line_fast():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"s3://bkt/runs?endpoint_override=127.0.0.1:{port}&scheme=http"
    with pytest.raises(StorageProblem) as err:
        storage.check_reachable(uri, timeout_s=2)
    assert "is not reachable" in str(err.value) and "AWS_ENDPOINT_URL" in str(err.value)
    storage.check_reachable("/any/local/folder")  # local storage: nothing to check here
    storage.check_reachable("s3://bkt/runs")  # AWS, region unknown: left to Ray (no request)


@pytest.mark.parametrize("uri, says", [
    ("s3://bkt/runs?endpoint=x", "--storage: s3://bkt/runs?endpoint=x: unknown option 'endpoint'"),
    ("s3://bkt/runs?endpoint_override=127.0.0.1:{port}&scheme=http", "--storage: storage s3://bkt/"
     "runs?endpoint_override=127.0.0.1:{port}&scheme=http is not reachable"),
])
def test_cli_refuses_storage_that_cannot_work_before_ray_with_exit_2(tmp_path, uri, says):
    """One line, exit 2, no Ray, no child process, nothing written (test_invalid_specs' check)."""
    from test_invalid_specs import _run_refused

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = tmp_path / "s.yaml"
    spec.write_text(f"# expect: {says.format(port=port)}\nname: s\nepochs: 1\n"
                    "data: {dataset: digits}\n")
    (tmp_path / "case").mkdir()
    out = _run_refused(spec, tmp_path / "case", ["--storage", uri.format(port=port), "--resume"])
    assert len([ln for ln in out.stderr.splitlines() if ln.strip()]) == 1, out.stderr
