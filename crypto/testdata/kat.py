#!/usr/bin/env python3
"""Independent computation of the known answers in kat.json (PROTOCOL.md §8.4).

Run: python3 crypto/testdata/kat.py > crypto/testdata/kat.json
X25519 (RFC 7748), HKDF (RFC 5869) and the message encoding are written out
here from the RFCs and PROTOCOL.md, not taken from the Go code; the AEADs
come from the 'cryptography' package.
"""
import hashlib, hmac, json, struct, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

P = 2**255 - 19

def x25519(k, u):
    k = bytearray(k); k[0] &= 248; k[31] &= 127; k[31] |= 64
    k = int.from_bytes(k, 'little')
    u = bytearray(u); u[31] &= 127
    x1 = int.from_bytes(u, 'little')
    x2, z2, x3, z3, swap = 1, 0, x1, 1, 0
    for t in reversed(range(255)):
        kt = (k >> t) & 1
        swap ^= kt
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = kt
        a = (x2 + z2) % P; aa = a * a % P
        b = (x2 - z2) % P; bb = b * b % P
        e = (aa - bb) % P
        c = (x3 + z3) % P; d = (x3 - z3) % P
        da = d * a % P; cb = c * b % P
        x3 = (da + cb) ** 2 % P
        z3 = x1 * (da - cb) ** 2 % P
        x2 = aa * bb % P
        z2 = e * (aa + 121665 * e) % P
    if swap:
        x2, x3, z2, z3 = x3, x2, z3, z2
    return (x2 * pow(z2, P - 2, P) % P).to_bytes(32, 'little')

# RFC 7748 §5.2 test vector.
assert x25519(bytes.fromhex('a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4'),
              bytes.fromhex('e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c')).hex() == \
    'c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552'

def extract(salt, ikm):
    return hmac.new(salt, ikm, hashlib.sha256).digest()

def expand(prk, info, n):
    out, t, i = b'', b'', 1
    while len(out) < n:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        out += t; i += 1
    return out[:n]

# RFC 5869 test case 1.
assert expand(extract(bytes.fromhex('000102030405060708090a0b0c'), b'\x0b' * 22),
              bytes.fromhex('f0f1f2f3f4f5f6f7f8f9'), 42).hex() == \
    '3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865'

def attr(t, v):
    return struct.pack('<HH', t, len(v)) + v

def message(typ, body, version=1):
    return b'DSTH' + struct.pack('<HBBI', version, typ, 0, len(body)) + body

def run(alg):
    psk = bytes(range(32))
    rand_c, sec_c = bytes(range(0x40, 0x60)), bytes(range(0x60, 0x80))
    rand_e, sec_e = bytes(range(0x80, 0xa0)), bytes(range(0xa0, 0xc0))
    base = (9).to_bytes(32, 'little')
    pub_c, pub_e = x25519(sec_c, base), x25519(sec_e, base)
    hello = message(1, attr(0x8001, b'kat') + attr(0x0002, struct.pack('<Q', 0x1f)) +
                    attr(0x0007, bytes([16])) + attr(0x8008, bytes([2, alg]) + rand_c + pub_c))
    welcome = message(2, attr(0x0101, b'\xee' * 16) + attr(0x0103, struct.pack('<Q', 1 << 20)) +
                      attr(0x0104, struct.pack('<I', 4096)) + attr(0x0106, struct.pack('<I', 1 << 20)) +
                      attr(0x0108, struct.pack('<Q', 0x1f)) + attr(0x0109, struct.pack('<I', 1024)) +
                      attr(0x010B, bytes([16])) + attr(0x810D, bytes([2, alg]) + rand_e + pub_e))
    dhe = x25519(sec_c, pub_e)
    assert dhe == x25519(sec_e, pub_c)
    th1 = hashlib.sha256(hello + welcome).digest()
    es = extract(b'dst1 psk', psk)
    hs = extract(expand(es, b'dst1 derived', 32), dhe)
    fk_e = expand(hs, b'dst1 exporter finished', 32)
    fk_c = expand(hs, b'dst1 client finished', 32)
    confirm_e = hmac.new(fk_e, th1, hashlib.sha256).digest()
    fin_e = message(4, attr(0x0401, confirm_e))
    th2 = hashlib.sha256(hello + welcome + fin_e).digest()
    confirm_c = hmac.new(fk_c, th2, hashlib.sha256).digest()
    fin_c = message(4, attr(0x0401, confirm_c))
    out = dict(hello=hello.hex(), welcome=welcome.hex(), dhe=dhe.hex(), th1=th1.hex(),
               finished_e=fin_e.hex(), finished_c=fin_c.hex())
    for d in ('c2e', 'e2c'):
        s = expand(hs, b'dst1 ' + d.encode() + b' traffic' + th1, 32)
        for k in range(2):
            key, iv = expand(s, b'dst1 key', 32), expand(s, b'dst1 iv', 12)
            out['%s_key%d' % (d, k)] = key.hex()
            out['%s_iv%d' % (d, k)] = iv.hex()
            if k == 0:
                aead = AESGCM(key) if alg == 1 else ChaCha20Poly1305(key)
                frames = []
                # Frame 0: WRITE id 1, offset 4096, 16 bytes. Frame 1: READ id 2 (no payload).
                for seq, (op, fid, length, payload) in enumerate([(2, 1, 16, b'0123456789abcdef'), (1, 2, 4096, b'')]):
                    hdr = b'DSTQ' + struct.pack('<BBHQQIIQ', op, 0, 0, fid, 4096, length, 0, 0)
                    nonce = bytes(a ^ b for a, b in zip(iv, b'\0\0\0\0' + struct.pack('>Q', seq)))
                    frames.append(dict(hdr=hdr.hex(), payload=payload.hex(),
                                       sealed=aead.encrypt(nonce, payload, hdr).hex()))
                out[d + '_frames'] = frames
            s = expand(s, b'dst1 next', 32)
    return out

json.dump({'aes-256-gcm': run(1), 'chacha20-poly1305': run(2)}, sys.stdout, indent=1)
print()
