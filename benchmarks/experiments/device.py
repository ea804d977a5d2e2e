"""A fedsync device with the proposed core changes patched in: python device.py VARIANTS ROLE [peers.py options].

Variants (comma-separated): npbuf, trust, stream; see README.md.
"""
import sys
HERE = __import__("pathlib").Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
import numpy as np
import peers
from fedsync.device import _reply
from fedsync.device import app as fserver
from fedsync.wire.http import ErrorCode
from fedsync import FedArrays
V = set(sys.argv.pop(1).split(",")) - {""}
if "npbuf" in V:   # receive into numpy's (transparent-hugepage) allocation instead of bytearray
    def _read_payload(request, length, as_view=False, into=None):
        buf = np.empty(length, np.uint8) if into is None else into; view = memoryview(buf); got = 0
        raw = request.environ["wsgi.input"]
        stream = raw if hasattr(raw, "readinto") else request.stream
        while got < length:
            n = stream.readinto(view[got:])
            if not n: raise fserver.ApiError(400, ErrorCode.TRUNCATED, "short")
            got += n
        if request.mimetype == "text/plain":
            return buf.tobytes().decode("utf-8")
        return buf
    fserver._read_payload = _read_payload
if "trust" in V:   # receive() trusts the payload on_submit just checked: no second isfinite pass
    import skipfinite as npproxy
    FedArrays.receive = npproxy.skipping(FedArrays.receive)
if "stream" in V:  # answer a Payload in 1 MiB bytes chunks (Content-Length set by the app), not frames_to's socket writes
    orig_response_body = _reply.response_body
    def response_body(encoding, sock=None, before_last=None):
        return orig_response_body(encoding, None, before_last)  # no socket: _reply.chunks, 1 MiB bytes copies
    _reply.response_body = response_body
peers.main()
