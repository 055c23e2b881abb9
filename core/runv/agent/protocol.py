"""The framed protocol between the host and the guest agent (stdlib only: it runs in the guest).

Every frame is ``|u8 kind|u32 channel|u32 length|payload|`` in network byte order:

* ``CTRL`` frames carry one JSON object. Requests from the host have ``id`` and ``op``;
  the agent answers each with the same ``id`` and either ``ok: true`` (plus results) or
  ``error: "message"``. Unsolicited agent messages have ``event`` (``ready``, ``exit``).
  The channel field of a control frame is 0.
* ``DATA`` frames carry raw bytes of one stream (a process's stdin, stdout or stderr),
  named by the channel number the host chose in the ``exec`` request. An empty payload
  is end-of-file for that stream.

See docs/agent-protocol.md for the operations.
"""

import json
import struct

HEADER = struct.Struct("!BII")
CTRL = 1
DATA = 2
MAX_PAYLOAD = 1 << 20


class ProtocolError(Exception):
    """The peer sent bytes that are not a valid frame."""


def encode_ctrl(message: dict) -> bytes:
    """One control frame holding ``message`` as compact JSON."""
    payload = json.dumps(message, separators=(",", ":")).encode()
    return HEADER.pack(CTRL, 0, len(payload)) + payload


def encode_data(channel: int, data: bytes) -> bytes:
    """Data frames for ``channel``; ``b""`` encodes end-of-file."""
    if not data:
        return HEADER.pack(DATA, channel, 0)
    frames = []
    for start in range(0, len(data), MAX_PAYLOAD):
        chunk = data[start : start + MAX_PAYLOAD]
        frames.append(HEADER.pack(DATA, channel, len(chunk)) + chunk)
    return b"".join(frames)


class FrameReader:
    """Incremental parser: feed it bytes as they arrive, get whole frames back."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list:
        """Returns the complete frames in ``data`` (plus what was buffered) as
        ``(kind, channel, payload)`` tuples; control payloads are decoded dicts."""
        self._buffer += data
        frames = []
        while len(self._buffer) >= HEADER.size:
            kind, channel, length = HEADER.unpack_from(self._buffer)
            if kind not in (CTRL, DATA) or length > MAX_PAYLOAD:
                raise ProtocolError(f"bad frame header kind={kind} length={length}")
            end = HEADER.size + length
            if len(self._buffer) < end:
                break
            payload = bytes(self._buffer[HEADER.size : end])
            del self._buffer[:end]
            if kind == CTRL:
                try:
                    payload = json.loads(payload)
                except ValueError as exc:
                    raise ProtocolError(f"bad control frame: {exc}") from None
            frames.append((kind, channel, payload))
        return frames
