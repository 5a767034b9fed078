#!/usr/bin/env python3
"""Forge a batch in a stopped mote's intake journal, as someone who can
write the file but does not have the sealing key would.

  forge_journal.py JOURNAL [--downgrade] [--ids ID,ID...]

Reads the format the mote documents (storage/src/journal.rs): a 4 KiB
header (magic, generation, MAC), then batches framed as generation (u64
LE), length (u32 LE), a 16-byte MAC, body; a body is ops, a put being
1, id (16 bytes), length (u32 LE), value. Collects the ids of every put it
finds from the first batch on (whatever its generation), and any given
with --ids (as `dustmote queue --show-addresses` lists them), then writes,
right after the current generation's last batch, one well-framed batch
that removes them all, with a MAC it had to guess. With --downgrade it
claims the first format instead (magic `dustjnl1`, batches framed with a
CRC-32 it can compute) and writes the batch that way. Prints one JSON
object: the generation, the offset of the forged batch and the ids."""
import json
import os
import struct
import sys
import zlib

HEADER, FRAME = 4096, 28


def main():
    path = sys.argv[1]
    data = bytearray(open(path, "rb").read())
    magic, generation = data[:8], struct.unpack_from("<Q", data, 8)[0]
    assert magic == b"dustjnl2", magic
    ids, offset, end, current = [], HEADER, None, True
    while offset + FRAME <= len(data):
        g, n = struct.unpack_from("<QI", data, offset)
        if g == 0 or offset + FRAME + n > len(data):
            break
        if g != generation and current:
            end, current = offset, False
        body = data[offset + FRAME: offset + FRAME + n]
        i = 0
        while i < len(body):
            kind = body[i]
            if kind == 1:
                ids.append(bytes(body[i + 1:i + 17]).hex())
                (vlen,) = struct.unpack_from("<I", body, i + 17)
                i += 21 + vlen
            elif kind == 2:
                i += 17
            elif kind == 3:
                i += 41
            elif kind == 4:
                i += 69
            else:
                break
        offset += FRAME + n
    if end is None:
        end = offset
    if "--ids" in sys.argv:
        given = sys.argv[sys.argv.index("--ids") + 1].split(",")
        ids += [i for i in given if i and i not in ids]
    forged = b"".join(b"\x02" + bytes.fromhex(i) for i in ids)
    if "--downgrade" in sys.argv:
        data[:8] = b"dustjnl1"
        head = struct.pack("<QI", generation, len(forged))
        frame = head + struct.pack("<I", zlib.crc32(head + forged)) + forged
    else:
        frame = struct.pack("<QI", generation, len(forged)) + os.urandom(16) + forged
    data[end:end + len(frame)] = frame
    with open(path, "r+b") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    print(json.dumps({"generation": generation, "offset": end, "ids": ids}))


if __name__ == "__main__":
    main()
