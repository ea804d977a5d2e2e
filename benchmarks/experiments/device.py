"""A fedsync device with the proposed core changes patched in: python device.py VARIANTS ROLE [peers.py options].

Variants (comma-separated): npbuf, trust, stream; see README.md.
"""
import sys
HERE = __import__("pathlib").Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
import numpy as np
import peers
from fedsync.device import app as fserver
from fedsync.wire import codec
from fedsync import FedArrays
V = set(sys.argv.pop(1).split(",")) - {""}
CHUNK = 1 << 20
if "npbuf" in V:   # receive into numpy's (transparent-hugepage) allocation instead of bytearray
    def _read_payload(request, length):
        buf = np.empty(length, np.uint8); view = memoryview(buf); got = 0
        raw = request.environ["wsgi.input"]
        stream = raw if hasattr(raw, "readinto") else request.stream
        while got < length:
            n = stream.readinto(view[got:])
            if not n: raise fserver.ApiError(400, "truncated", "short")
            got += n
        if request.mimetype == "text/plain":
            return buf.tobytes().decode("utf-8")
        return buf
    fserver._read_payload = _read_payload
if "trust" in V:   # receive() trusts the payload on_submit just checked: no second isfinite pass
    import skipfinite as npproxy
    FedArrays.receive = npproxy.skipping(FedArrays.receive)
if "stream" in V:  # answer a Payload in 1 MiB bytes chunks with a Content-Length: no model-sized join
    class Chunks:
        def __init__(self, payload): self.payload = payload
        def __iter__(self):
            for frame in self.payload.frames:
                view = memoryview(frame).cast("B")
                for i in range(0, len(view), CHUNK):
                    yield bytes(view[i:i + CHUNK])
    orig_body = fserver._body
    def _body(encoding):
        if isinstance(encoding, codec.Payload): return Chunks(encoding), "application/octet-stream"
        return orig_body(encoding)
    fserver._body = _body
    Base = fserver.Response
    class Response(Base):
        def __init__(self, body=None, *args, **kwargs):
            super().__init__(body, *args, **kwargs)
            if isinstance(body, Chunks): self.headers["Content-Length"] = str(len(body.payload))
    fserver.Response = Response
peers.main()
