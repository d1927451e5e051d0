"""API fuzzing over the service's own OpenAPI document (schemathesis), against the real service
process with real Docker sandboxes: no 5xx, every response documented and matching its schema.

Bounded: MAX_EXAMPLES cases per operation (about a minute in all). Every check runs except
``positive_data_acceptance``: limits that are settings (code size, timeout, packages that must
exist) and cross-field rules (bufferMin <= bufferMax) are not in a static schema, so a
schema-valid request may rightly be refused with a 4xx. Creating and resizing warm pools is
left out: a fuzzed pool size would boot that many sandboxes on a machine shared with other
test runs (pool sizes are bounded by their schema, checked in test/unit/http).

A failure prints schemathesis' report, with the seed and a curl line per failing case;
``st run --seed <seed> ...`` with the same options replays the run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from testkit.service import API_KEY, ServiceFactory

pytestmark = [pytest.mark.docker]

MAX_EXAMPLES = 60
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


def test_fuzzing_the_openapi_document(services: ServiceFactory, tmp_path: Path) -> None:
    refuse_all = tmp_path / "allow-nothing.txt"
    refuse_all.write_text("# no package may be fetched: fuzzed names must not reach PyPI\n")
    service = services(
        max_sandboxes="6",
        max_timeout_s="5",
        package_allowlist=str(refuse_all),
        ttl_seconds="30",
        cleanup_interval_seconds="5",
    )
    run = subprocess.run(
        [
            str(SCHEMATHESIS),
            "run",
            f"{service.http_url}/openapi.json",
            "--checks=all",
            "--exclude-checks=positive_data_acceptance",
            # Excluded together: POST and PUT of /v1/pools (both filters must match).
            "--exclude-path-regex=^/v1/pools",
            "--exclude-method-regex=^(POST|PUT)$",
            f"--max-examples={MAX_EXAMPLES}",
            f"--header=Authorization: Bearer {API_KEY}",
            "--request-timeout=60",
            "--workers=2",
            "--no-shrink",
            f"--report-dir={tmp_path / 'report'}",
        ],
        # Its cache of crashes (.schemathesis/) goes there, not into the checkout.
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    report = run.stdout[-12000:] + run.stderr[-2000:]

    assert run.returncode == 0, report
    assert "Tested: 16" in run.stdout, report
    assert service.process is not None and service.process.poll() is None
    assert '"event": "http_unhandled_error"' not in service.log_text()
