"""``costs``, ``ledger`` and ``budget`` name the server they could not reach without
its password (through click's runner; a closed port on 127.0.0.1)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from aicm_tasks.cli import main
from aicm_tasks.devtools.processes import free_port


@pytest.mark.parametrize("command", [["costs"], ["budget"]], ids=" ".join)
@pytest.mark.parametrize("how", ["option", "environment"])
def test_a_server_url_with_a_password_is_never_echoed(command: list[str], how: str) -> None:
    url = f"http://admin:S3CRET-PW@127.0.0.1:{free_port()}"
    env = {"AICM_SERVER_API_KEY": "unit-key"}
    if how == "option":
        command = [*command, "--url", url]
    else:
        env["AICM_SERVER_URL"] = url
    result = CliRunner().invoke(main, command, env=env)
    assert result.exit_code != 0
    assert "no answer from the local server" in result.output
    assert "S3CRET-PW" not in result.output
