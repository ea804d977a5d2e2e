"""`Remote` takes its token from $FEDSYNC_TOKEN when none is given, as `fedsync serve` and `fedsync info` do."""

import pytest

import fedsync
from fedsync import Federated, Remote
from fedsync.errors import RoundFailed
from tests.support.seed_fedfloat import FedFloat


def test_a_remote_sends_the_environment_token_to_a_device_that_requires_it(monkeypatch):
    with fedsync.serve(FedFloat(3.0), port=0, block=False, token="from-env") as server:
        monkeypatch.delenv("FEDSYNC_TOKEN", raising=False)
        with Federated(data=FedFloat(0.0), remotes=[server.url], timeout=10) as alg:
            with pytest.raises(RoundFailed, match="401"):
                alg.round()
        monkeypatch.setenv("FEDSYNC_TOKEN", " from-env\n")  # read from a file: stripped, as serve strips it
        with Federated(data=FedFloat(0.0), remotes=[server.url], timeout=10) as alg:
            assert alg.round().repetition == 1


def test_a_given_token_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("FEDSYNC_TOKEN", "from-env")
    assert Remote("http://127.0.0.1:1", token="given").transport.session.headers["Authorization"] == "Bearer given"
    assert Remote("http://127.0.0.1:1").transport.session.headers["Authorization"] == "Bearer from-env"
    monkeypatch.delenv("FEDSYNC_TOKEN")
    assert "Authorization" not in Remote("http://127.0.0.1:1").transport.session.headers


@pytest.mark.parametrize("bad", ["", "   ", "sec\x07ret", "sécret"])
def test_a_bad_environment_token_is_named_and_not_shown(monkeypatch, bad):
    monkeypatch.setenv("FEDSYNC_TOKEN", bad)
    with pytest.raises(ValueError, match=r"bad token in \$FEDSYNC_TOKEN") as raised:
        Remote("http://127.0.0.1:1")
    assert bad.strip() == "" or bad not in str(raised.value)
