"""CI turns skips for a missing required package into failures (FEDSYNC_REQUIRE_EXTRAS=1, set by .ci/run)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_probe_missing_extra():
    if os.environ.get("FEDSYNC_PROBE") != "1":
        pytest.skip("a probe run only by test_a_skip_for_a_missing_extra_fails_when_extras_are_required")
    pytest.importorskip("tensorboardX_probe_that_is_never_installed")


@pytest.mark.slow  # starts processes that run a whole command: full suite only (fast tier < 90 s)
@pytest.mark.parametrize("required, outcome", [("1", "1 failed"), ("", "1 skipped")])
def test_a_skip_for_a_missing_extra_fails_when_extras_are_required(required, outcome):
    env = dict(os.environ, FEDSYNC_PROBE="1", FEDSYNC_REQUIRE_EXTRAS=required)
    probe = f"{Path(__file__).relative_to(ROOT)}::test_probe_missing_extra"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", probe],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=env,
    )  # fmt: skip
    assert outcome in run.stdout, run.stdout[-2000:]
    assert ("FEDSYNC_REQUIRE_EXTRAS=1: skipped for a missing required package (tensorboardX" in run.stdout) == (
        required == "1"
    )
