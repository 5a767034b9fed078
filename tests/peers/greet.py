"""Shared by the attack scripts (imported, not run): an SMTP session on
127.0.0.1 up to a successful EHLO."""
import asyncio


async def ehlo(port, name):
    """Connect, read the greeting, send EHLO `name` and read its reply
    (5 s each): the (reader, writer) after a 250, else None (the writer
    closed). Connection errors and timeouts are raised."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.wait_for(r.readline(), 5)
    w.write(f"EHLO {name}\r\n".encode())
    while True:
        line = await asyncio.wait_for(r.readline(), 5)
        if not line.startswith(b"250-"):
            break
    if not line.startswith(b"250 "):
        w.close()
        return None
    return r, w
