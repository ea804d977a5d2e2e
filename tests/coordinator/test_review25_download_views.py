"""Review of #25's download as a delta (``download="delta"``) on the coordinator: negotiation and memory.

Real parts: the coordinator's FedArrays and its handshake state (``Handshakes``), real ``Remote`` objects
(nothing is dialled: ``payloads`` only reads their URLs), payloads decoded with the real codec.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedsync import FedArrays
from fedsync.coordinator._handshake import Handshakes
from fedsync.data import _views
from fedsync.transports.remote import Remote
from fedsync.wire import codec


def remotes_listing(handshakes: Handshakes, formats: list[str], count: int) -> list[Remote]:
    """``count`` remotes whose /info said they decode ``formats`` (as after a handshake)."""
    out = [Remote(f"http://127.0.0.1:{9000 + i}") for i in range(count)]
    for remote in out:
        handshakes.known.add(remote.url)
        handshakes.capabilities[remote.url] = {"wire_formats": list(formats)}
    return out


def test_devices_holding_forgotten_views_share_one_whole_model_payload():
    data = FedArrays({"w": np.linspace(-1, 1, 4096, dtype=np.float32)}, wire_dtype="float16", download="delta")
    handshakes = Handshakes()
    remotes = remotes_listing(handshakes, ["float16", "delta"], 12)
    for i, remote in enumerate(remotes):  # views from rounds long gone (partial participation, churn)
        handshakes.held[remote.url] = "sha256:" + format(i + 1, "064x")
    assert not any(base in data.views.kept for base in handshakes.held.values())

    payloads = handshakes.payloads(data, remotes, 7)

    assert set(payloads) == {r.url for r in remotes}
    for payload in payloads.values():  # each is the whole model, with a view to keep
        _, metadata = codec.decode(payload)
        assert _views.BASE_KEY not in metadata and metadata[_views.VIEW_KEY] == "1"
    # The same bytes for every one of them: at most one per view the coordinator keeps (+1 whole).
    distinct = {id(p) for p in payloads.values()}
    assert len(distinct) <= _views.MAX_VIEWS + 1, f"{len(distinct)} model-sized payloads held for one round"


def test_download_top_k_goes_only_to_devices_that_decode_topk():
    data = FedArrays({"w": np.arange(200, dtype=np.float32)}, download="delta", download_top_k=0.1)
    handshakes = Handshakes()
    (remote,) = remotes_listing(handshakes, ["float16", "bfloat16", "int8", "int4", "delta"], 1)  # no "topk"
    first = handshakes.payloads(data, [remote], 1)
    assert remote.url in first
    handshakes.held[remote.url] = handshakes.pending[remote.url]  # it accepted round 1's whole model
    data.model["w"] += np.float32(0.5)

    payloads = handshakes.payloads(data, [remote], 2)

    _, metadata = codec.decode(payloads.get(remote.url, data.serialize(2)))
    assert "topk" not in metadata.get("fedsync.wire", ""), "a topk payload to a device that does not list topk"


def test_an_stc_download_goes_only_to_devices_that_decode_stc_the_others_get_the_dense_delta():
    data = FedArrays({"w": np.arange(200, dtype=np.float32)}, download="stc", download_top_k=0.1)
    handshakes = Handshakes()
    knows, topk_only = remotes_listing(handshakes, ["float16", "topk", "stc", "delta"], 2)
    handshakes.capabilities[topk_only.url] = {"wire_formats": ["float16", "topk", "delta"]}  # no "stc"
    handshakes.payloads(data, [knows, topk_only], 1)
    for remote in (knows, topk_only):
        handshakes.held[remote.url] = handshakes.pending[remote.url]  # both accepted round 1's whole model
    data.model["w"] += np.float32(0.5)

    payloads = handshakes.payloads(data, [knows, topk_only], 2)

    wire = {r: codec.decode(payloads[r.url])[1].get("fedsync.wire", "") for r in (knows, topk_only)}
    assert '"as":"stc"' in wire[knows]
    assert wire[topk_only] == "" and codec.decode(payloads[topk_only.url])[1]["fedsync.base"]  # a dense delta
