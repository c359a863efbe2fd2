#!/usr/bin/env python3
"""Writes the seed corpus in fuzz/seeds/<target>/ from RFC 6455 vectors and unit-test
inputs. Run from the repository root; the output is checked in."""
import os
import struct

REQ = (b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
       b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://example.com\r\n"
       b"Sec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Version: 13\r\n\r\n")
KEY = b"\x37\xfa\x21\x3d"


def mask(data, key=KEY):
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


def frame(op, payload, fin=True, masked=True, rsv=0):
    b0 = (0x80 if fin else 0) | (rsv << 4) | op
    n = len(payload)
    m = 0x80 if masked else 0
    if n < 126:
        hdr = bytes([b0, m | n])
    elif n < 65536:
        hdr = bytes([b0, m | 126]) + struct.pack(">H", n)
    else:
        hdr = bytes([b0, m | 127]) + struct.pack(">Q", n)
    return hdr + (KEY + mask(payload) if masked else payload)


def write(target, name, data):
    d = os.path.join("fuzz", "seeds", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# handshake_server: split mode byte, then request bytes.
write("handshake_server", "rfc_request", b"\x00" + REQ)
write("handshake_server", "rfc_request_trickled", b"\x07" + REQ)
write("handshake_server", "bad_version", b"\x00" + REQ.replace(b"Version: 13", b"Version: 8"))
write("handshake_server", "pipelined_frame", b"\x03" + REQ + frame(1, b"Hello"))
write("handshake_server", "many_headers", b"\x00GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(40)) + b"\r\n")

# handshake_client: split mode byte (high bit: a valid 101 head is prepended), then bytes.
write("handshake_client", "status_302", b"\x00HTTP/1.1 302 Found\r\nLocation: ws://x/\r\n\r\n")
write("handshake_client", "valid_then_frames", b"\x80\r\n" + frame(1, b"Hello", masked=False))
write("handshake_client", "extension", b"\x81Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n")

# frames_server: masked client frames (RFC 6455 5.7 and failure rules).
server_seeds = {
    "hello_masked": frame(1, b"Hello"),
    "fragmented": frame(1, b"Hel", fin=False) + frame(0, b"lo"),
    "ping_between_fragments": frame(1, b"Hel", fin=False) + frame(9, b"p") + frame(0, b"lo"),
    "binary_256": frame(2, bytes(range(256))),
    "binary_64k": frame(2, bytes(65536)),
    "close_normal": frame(8, b"\x03\xe8bye"),
    "close_one_byte": frame(8, b"\x03"),
    "reserved_opcode": frame(3, b""),
    "rsv1": frame(1, b"x", rsv=4),
    "unmasked": frame(1, b"x", masked=False),
    "invalid_utf8": frame(1, b"ab\xf4\x90cd"),
    "huge_length": bytes([0x82, 0xFF, 0x7F]) + b"\xff" * 7 + KEY,
    "top_bit_length": bytes([0x82, 0xFF, 0x80]) + b"\x00" * 7 + KEY,
    "empty_fragments": frame(2, b"", fin=False) + frame(0, b"", fin=False) * 50 + frame(0, b""),
}
for i, (name, data) in enumerate(sorted(server_seeds.items())):
    write("frames_server", name, bytes([i % 7]) + data)

client_seeds = {
    "hello": frame(1, b"Hello", masked=False),
    "fragmented": frame(1, b"Hel", fin=False, masked=False) + frame(0, b"lo", masked=False),
    "ping": frame(9, b"Hello", masked=False),
    "masked_from_server": frame(1, b"x"),
    "close": frame(8, b"\x03\xe8", masked=False),
}
for i, (name, data) in enumerate(sorted(client_seeds.items())):
    write("frames_client", name, bytes([i % 7]) + data)

# frames_deflate: compressed messages (RSV1), from RFC 7692 7.2.3 and zlib.
import zlib


def deflate(data, wbits=-15):
    c = zlib.compressobj(6, zlib.DEFLATED, wbits)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    return out[:-4]


deflate_seeds = {
    "rfc7692_hello": frame(1, b"\xf2\x48\xcd\xc9\xc9\x07\x00", rsv=4),
    "compressed_text": frame(1, deflate("κόσμε ".encode() * 200), rsv=4),
    "compressed_fragmented": frame(2, deflate(bytes(5000))[:10], fin=False, rsv=4) + frame(0, deflate(bytes(5000))[10:]),
    "bomb": frame(2, deflate(bytes(1 << 20)), rsv=4),
    "rsv1_on_continuation": frame(1, b"a", fin=False) + frame(0, b"b", rsv=4),
    "corrupt": frame(2, b"\xff\xff\xff\xff", rsv=4),
    "empty_compressed": frame(1, b"\x00", rsv=4),
}
for i, (name, data) in enumerate(sorted(deflate_seeds.items())):
    write("frames_deflate", name, bytes([i % 7]) + data)

write("utf8", "greek", b"\x03" + "κόσμε".encode())
write("utf8", "surrogate", b"\x01ab\xed\xa0\x80")
write("utf8", "four_byte", b"\x02" + "𝄞𝄞".encode())
write("mask", "hello", KEY + b"\x00Hello")
write("mask", "long", KEY + b"\x03" + bytes(range(200)))
write("roundtrip", "text_and_binary", b"\x11\x02hello world!!! some text that is long enough to fill\x20\x03" + bytes(range(111)) + b"\x05\x01abc")
write("api_sequence", "open_and_chat", bytes([7, 255, 11, 0, 8, 255, 0, 10, 7, 255, 1, 20, 8, 255, 4, 50, 7, 255, 8, 255, 7, 255, 9, 1]))
