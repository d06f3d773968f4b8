# spec/support/rfb_server.py — a STAND-IN for an old RFB (VNC) server, the
# kind QEMU cannot play (it always speaks 3.8): it announces RFB 3.3 or 3.7
# so the client's older handshakes are exercised, and records every KeyEvent
# it receives. Serves connections one at a time until killed. Not a VNC
# server: no framebuffer, no auth but None.
#
#   python3 rfb_server.py PORT VERSION MODE KEYLOG
#     VERSION  "003.003" or "003.007"
#     MODE     "none"   security None, ServerInit named "standin", KeyEvents
#                       appended to KEYLOG as "down keysym-hex" lines
#              "refuse" no security types, the reason "too many clients"
import socket
import struct
import sys

port, version, mode, keylog = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]


def recv_exact(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf



def serve(conn):
    conn.sendall(b"RFB " + version.encode() + b"\n")
    recv_exact(conn, 12)
    if mode == "refuse":
        reason = b"too many clients"
        if version == "003.003":
            conn.sendall(struct.pack(">II", 0, len(reason)) + reason)
        else:
            conn.sendall(struct.pack(">BI", 0, len(reason)) + reason)
        return
    if version == "003.003":
        conn.sendall(struct.pack(">I", 1))
    else:
        conn.sendall(bytes([2, 16, 1]))  # Tight, None: the client picks None
        if recv_exact(conn, 1) != b"\x01":
            return
    recv_exact(conn, 1)  # ClientInit
    name = b"standin"
    conn.sendall(struct.pack(">HH16sI", 800, 600, b"\0" * 16, len(name)) + name)
    with open(keylog, "a") as log:
        while True:
            kind, down, key = struct.unpack(">BBxxI", recv_exact(conn, 8))
            if kind != 4:
                return
            log.write("%d %x\n" % (down, key))
            log.flush()


# connections one after the other (the first is peer.start's port probe)
# until stopped by PID
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(4)
while True:
    c, _ = srv.accept()
    try:
        serve(c)
    except (EOFError, OSError):
        pass
    finally:
        c.close()
