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

# The version of the operations below, in the agent's ``ready`` event and its ``clone`` reply:
# the host refuses an agent that speaks another (a guest image another release built). 0: not said.
VERSION = 1
HEADER = struct.Struct("!BII")
CTRL = 1
DATA = 2
MAX_PAYLOAD = 1 << 20
MAX_DEPTH = 32  # nesting of a control frame's JSON: deeper is refused before it is parsed


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
        self._error: ProtocolError | None = None

    def feed(self, data: bytes) -> list:
        """Returns the complete frames in ``data`` (plus what was buffered) as
        ``(kind, channel, payload)`` tuples; control payloads are decoded dicts. A bad
        frame raises ProtocolError, after the good frames before it were returned (the
        error then comes from the next call: feed it ``b""``)."""
        if self._error is not None:
            raise self._error
        self._buffer += data
        frames = []
        try:
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
                    payload = decode_ctrl(payload)
                frames.append((kind, channel, payload))
        except ProtocolError as exc:
            if not frames:
                raise
            self._error = exc
        return frames

    @property
    def failed(self) -> bool:
        """A bad frame is waiting to be raised by the next :meth:`feed`."""
        return self._error is not None


def nesting(payload: bytes) -> int:
    """The deepest nesting of ``[`` and ``{`` in JSON text (brackets in strings skipped),
    counted without recursion, so that hostile depth never reaches the parser."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in payload:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > deepest:
                deepest = depth
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def decode_ctrl(payload: bytes) -> dict:
    """A control frame's JSON object; anything else (bad JSON, too deep, not an object)
    is a ProtocolError, never another exception."""
    if (payload.count(b"[") + payload.count(b"{") > MAX_DEPTH) and nesting(payload) > MAX_DEPTH:
        raise ProtocolError(f"control frame nested deeper than {MAX_DEPTH}")
    try:
        message = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"bad control frame: {str(exc)[:200]}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"control frame is a JSON {type(message).__name__}, not an object")
    return message
