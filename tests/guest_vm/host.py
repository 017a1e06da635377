#!/usr/bin/env python3
"""Plays the host against agentlab-guest running in a real (TCG) VM over a
virtio-serial port: the QEMU chardev socket is the host end. Connects late
on purpose, so the helper first sees the port without a host (POLLHUP)."""
import socket, struct, sys, time, tarfile, io

sock_path, connect_delay = sys.argv[1], float(sys.argv[2])

def tlv(tag, v):
    v = v.encode() if isinstance(v, str) else v
    return struct.pack(">HI", tag, len(v)) + v

def frame(t, p=b""):
    return struct.pack(">BBHI", t, 0, 0, len(p)) + p

def tlvs(p):
    out, i = {}, 0
    while i < len(p):
        tag, n = struct.unpack(">HI", p[i:i + 6])
        out.setdefault(tag, []).append(p[i + 6:i + 6 + n].decode(errors="replace"))
        i += 6 + n
    return out

time.sleep(connect_delay)
s = socket.socket(socket.AF_UNIX)
s.connect(sock_path)
s.settimeout(120)
buf, frames, t0 = b"", [], time.monotonic()

def next_frame():
    global buf
    while True:
        if len(buf) >= 8:
            t, f, r, n = struct.unpack(">BBHI", buf[:8])
            assert f == 0 and r == 0 and n <= 1 << 20, "bad header"
            if len(buf) >= 8 + n:
                p, buf = buf[8:8 + n], buf[8 + n:]
                frames.append((t, p, time.monotonic() - t0))
                return t, p
        d = s.recv(65536)
        if not d:
            raise SystemExit("FAIL: guest closed the port")
        buf += d

t, p = next_frame()
assert t == 1, t
hello = tlvs(p)
assert hello[1] == ["1"] and 2 not in hello, hello
print("HELLO", hello)

job = (tlv(2, "vm-job-1") + tlv(15, "agentlab") + tlv(13, "60") + tlv(14, "art.txt")
       + tlv(11, "echo kernel $(uname -r); id -u; echo oops >&2; echo artifact-data > art.txt; "
                 "echo token=$TOKEN | cut -c1-6; sleep 1; echo late; exit 7"))
s.sendall(frame(64, job) + frame(65, tlv(30, "TOKEN=hush")) + frame(68))

out, err, art = b"", b"", b""
while True:
    t, p = next_frame()
    if t == 3: out += p
    elif t == 4: err += p
    elif t == 7: art += p
    elif t == 8: end = tlvs(p)
    elif t == 6: print("DIAG", tlvs(p))
    elif t == 9:
        ex = tlvs(p)
        break
print("STDOUT", out)
print("STDERR", err)
print("ARTIFACT_END", end)
print("EXIT", ex)
types = [f[0] for f in frames]
assert types.index(2) < types.index(3), types
assert ex[40] == ["7"] and ex[43] == ["exited"], ex
assert b"oops\n" == err, err
lines = out.decode().splitlines()
assert lines[0].startswith("kernel ") and lines[1] == "1000" and lines[2] == "token=" and lines[3] == "late", lines
first = next(f[2] for f in frames if f[0] == 3)
last = next(f[2] for f in reversed(frames) if f[0] == 3)
assert last - first > 0.7, "output was not live"
assert end[45] == ["1"] and int(end[44][0]) == len(art), end
with tarfile.open(fileobj=io.BytesIO(art)) as tf:
    assert tf.extractfile("art.txt").read() == b"artifact-data\n"
# the guest powers off now; the host sees the port close
try:
    while s.recv(65536):
        pass
except OSError:
    pass
print("PASS")
