#!/usr/bin/env python3
"""Independent ESP checks for roamgate's tests, built on scapy's ESP implementation.

  esp_check.py decrypt PCAP SAS_JSON
      Decrypts every ESP packet (IP proto 50 or UDP 4500) in PCAP with scapy's
      SecurityAssociation and checks the inner packet carries roamgate's traffic stamp.
      Prints one JSON object: {"esp": n, "decrypted": n, "stamped": n, "failed": n, "clear": n}.

  esp_check.py encrypt OUT_PCAP SAS_JSON SPEC_JSON
      Writes ESP frames made by scapy (and deliberately broken ones, crafted with the
      `cryptography` AES-GCM or AES-CBC and Python's hmac directly) for roamgate to receive.

SAS_JSON: [{"spi": int, "key": hex (AES-GCM: key+salt; AES-CBC: the AES key), "esn": bool,
            "src": ip, "dst": ip, "udp": bool,
            optional "crypt": "AES-GCM" (default) | "AES-CBC",
            "auth": "HMAC-SHA1-96" | "SHA2-256-128" | "SHA2-384-192" | "SHA2-512-256",
            "auth_key": hex, "esn_hi": int (the high half of every sequence number)}]
"""
import hashlib
import hmac
import os
import json
import struct
import sys

from scapy.all import Ether, IP, IPv6, UDP, Raw, rdpcap, wrpcap  # noqa: E402
from scapy.layers.ipsec import ESP, SecurityAssociation  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: E402

# ESP integrity algorithms: (hash, ICV length).
HMACS = {"HMAC-SHA1-96": (hashlib.sha1, 12), "SHA2-256-128": (hashlib.sha256, 16),
         "SHA2-384-192": (hashlib.sha384, 24), "SHA2-512-256": (hashlib.sha512, 32)}

STAMP_MAGIC = 0x52474C42


def make_sa(sa):
    key = bytes.fromhex(sa["key"])
    if sa["src"].count(":") > 0:
        hdr = IPv6(src=sa["src"], dst=sa["dst"])
    else:
        hdr = IP(src=sa["src"], dst=sa["dst"])
    if sa.get("crypt", "AES-GCM") == "AES-CBC":
        algs = dict(crypt_algo="AES-CBC", crypt_key=key, auth_algo=sa["auth"],
                    auth_key=bytes.fromhex(sa["auth_key"]))
    else:
        algs = dict(crypt_algo="AES-GCM", crypt_key=key, auth_algo="NULL")
    kwargs = dict(tunnel_header=hdr, esn_en=bool(sa.get("esn")), esn=sa.get("esn_hi", 0),
                  **algs)
    if sa.get("udp"):
        kwargs["nat_t_header"] = UDP(sport=4500, dport=4500)
    return SecurityAssociation(ESP, spi=sa["spi"], **kwargs)


def esp_layer(pkt):
    """Returns (outer_ip, esp bytes) or None."""
    ip = pkt.getlayer(IP) or pkt.getlayer(IPv6)
    if ip is None:
        return None
    if pkt.haslayer(ESP):
        return ip
    if pkt.haslayer(UDP) and pkt[UDP].dport == 4500:
        return ip
    return None


def decrypt(pcap, sas_json):
    sas = {s["spi"]: (s, make_sa(s)) for s in json.load(open(sas_json))}
    out = {"esp": 0, "decrypted": 0, "stamped": 0, "failed": 0, "clear": 0, "errors": []}
    for frame in rdpcap(pcap):
        ip = esp_layer(frame)
        if ip is None:
            out["clear"] += 1
            continue
        out["esp"] += 1
        if frame.haslayer(UDP):
            # ESP in UDP: rebuild as plain ESP under the outer IP for scapy's SA.
            payload = bytes(frame[UDP].payload)
            if isinstance(ip, IP):
                pkt = IP(src=ip.src, dst=ip.dst, proto=50) / Raw(payload)
            else:
                pkt = IPv6(src=ip.src, dst=ip.dst, nh=50) / Raw(payload)
            pkt = pkt.__class__(bytes(pkt))
        else:
            pkt = ip
        spi = struct.unpack("!I", bytes(pkt[ESP])[:4])[0] if pkt.haslayer(ESP) else None
        if spi not in sas:
            out["failed"] += 1
            out["errors"].append(f"unknown spi {spi}")
            continue
        try:
            inner = sas[spi][1].decrypt(pkt)
        except Exception as e:  # noqa: BLE001 - report any failure
            out["failed"] += 1
            if len(out["errors"]) < 5:
                out["errors"].append(repr(e))
            continue
        out["decrypted"] += 1
        if inner.haslayer(UDP):
            data = bytes(inner[UDP].payload)
            if len(data) >= 4 and struct.unpack("!I", data[:4])[0] == STAMP_MAGIC:
                out["stamped"] += 1
    print(json.dumps(out))


def stamp(flow, seq):
    return struct.pack("!IHQQ", STAMP_MAGIC, flow, seq, 0) + bytes(range(40))


def raw_esp(sa, seq, inner, pad_ok=True, nh=4):
    """ESP (header + IV + ct + ICV) made with cryptography's AES-GCM or AES-CBC and hmac
    directly, so padding can be broken on purpose. `seq` is the low half; the SA's esn_hi
    is the high half."""
    seq |= sa.get("esn_hi", 0) << 32
    if sa.get("crypt", "AES-GCM") == "AES-CBC":
        return raw_cbc(sa, seq, inner, pad_ok, nh)
    key = bytes.fromhex(sa["key"])
    aes, salt = key[:-4], key[-4:]
    iv = struct.pack("!Q", seq)
    padlen = (4 - (len(inner) + 2) % 4) % 4 or 4
    pad = bytes(range(1, padlen + 1)) if pad_ok else bytes([9] * padlen)
    pt = inner + pad + bytes([padlen, nh])
    if sa.get("esn"):
        aad = struct.pack("!III", sa["spi"], seq >> 32, seq & 0xFFFFFFFF)
    else:
        aad = struct.pack("!II", sa["spi"], seq & 0xFFFFFFFF)
    ct = AESGCM(aes).encrypt(salt + iv, pt, aad)
    return struct.pack("!II", sa["spi"], seq & 0xFFFFFFFF) + iv + ct


def raw_cbc(sa, seq, inner, pad_ok, nh):
    """RFC 3602 + RFC 4303: random IV, block padding, HMAC over SPI..ciphertext (|| seq hi)."""
    iv = os.urandom(16)
    padlen = (16 - (len(inner) + 2) % 16) % 16 or 16
    pad = bytes(range(1, padlen + 1)) if pad_ok else bytes([9] * padlen)
    enc = Cipher(algorithms.AES(bytes.fromhex(sa["key"])), modes.CBC(iv)).encryptor()
    ct = enc.update(inner + pad + bytes([padlen, nh])) + enc.finalize()
    authed = struct.pack("!II", sa["spi"], seq & 0xFFFFFFFF) + iv + ct
    digest, icv_len = HMACS[sa["auth"]]
    mac = hmac.new(bytes.fromhex(sa["auth_key"]), authed, digest)
    if sa.get("esn"):
        mac.update(struct.pack("!I", seq >> 32))
    return authed + mac.digest()[:icv_len]


def encrypt(out_pcap, sas_json, spec_json):
    sa = json.load(open(sas_json))[0]
    spec = json.load(open(spec_json))
    scapy_sa = make_sa(sa)
    eth = Ether(src=spec["src_mac"], dst=spec["dst_mac"])
    frames = []
    n = spec["good"]
    for seq in range(1, n + 1):
        inner = IP(src=spec["inner_src"], dst=spec["inner_dst"]) / UDP(sport=40000, dport=5001) / Raw(stamp(0, seq - 1))
        scapy_sa.seq_num = seq
        frames.append(eth / scapy_sa.encrypt(inner))
    outer = IP(src=sa["src"], dst=sa["dst"], proto=50)
    good_last = bytes(frames[-1][IP].payload)
    # Replay: the last good packet again.
    frames.append(eth / IP(src=sa["src"], dst=sa["dst"], proto=50) / Raw(good_last))
    # Truncated: header and IV only.
    frames.append(eth / outer / Raw(good_last[:16]))
    # Bad tag: last byte flipped.
    bad = bytearray(raw_esp(sa, n + 1, bytes(IP(src=spec["inner_src"], dst=spec["inner_dst"]) / UDP() / Raw(stamp(0, n)))))
    bad[-1] ^= 0x01
    frames.append(eth / outer / Raw(bytes(bad)))
    # Bad padding (authentic, so it passes the tag).
    inner = bytes(IP(src=spec["inner_src"], dst=spec["inner_dst"]) / UDP() / Raw(stamp(0, n + 1)))
    frames.append(eth / outer / Raw(raw_esp(sa, n + 2, inner, pad_ok=False)))
    # Unknown SPI.
    other = dict(sa, spi=0x0BADC0DE)
    frames.append(eth / outer / Raw(raw_esp(other, 1, inner)))
    # TFC dummy packet: next header 59, accepted and dropped silently.
    frames.append(eth / outer / Raw(raw_esp(sa, n + 3, b"\x00" * 16, nh=59)))
    wrpcap(out_pcap, frames)


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "decrypt":
        decrypt(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 5 and sys.argv[1] == "encrypt":
        encrypt(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
