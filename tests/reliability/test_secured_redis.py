"""The whole pipeline over a Redis with a password, and over TLS (rediss://)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from aicm_tasks.devtools.processes import free_port, start_redis, stop_process
from tests.support.accounting import account
from tests.support.pipeline import Pipeline, publish


def run_over(pipeline: Pipeline, scenario: str) -> None:
    pipeline.start_worker()
    ids = publish(pipeline, 2000)
    pipeline.wait_drained(timeout_s=120)
    result = account(pipeline, scenario, set(ids))
    assert result.lost == 0 and result.delivered == 2000


def test_a_password_protected_redis(pipeline_factory, tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://:pa55-word@127.0.0.1:{port}/0"
    private = start_redis(
        port, tmp_path / "redis", extra_args=["--requirepass", "pa55-word"], ready_url=url
    )
    try:
        pipeline: Pipeline = pipeline_factory(broker_url=url)
        run_over(pipeline, "redis with a password")
        assert "pa55-word" not in pipeline.logs()
    finally:
        stop_process(private)


def test_redis_over_tls(pipeline_factory, tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    url = f"rediss://:tls-pass@127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={cert}"
    tls = [
        "--port",
        "0",
        "--tls-port",
        str(port),
        "--tls-cert-file",
        str(cert),
        "--tls-key-file",
        str(key),
        "--tls-ca-cert-file",
        str(cert),
        "--tls-auth-clients",
        "no",
        "--requirepass",
        "tls-pass",
    ]
    private = start_redis(port, tmp_path / "redis", extra_args=tls, ready_url=url)
    try:
        pipeline: Pipeline = pipeline_factory(broker_url=url)
        run_over(pipeline, "redis over TLS (rediss://)")
    finally:
        stop_process(private)
