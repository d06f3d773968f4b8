#!/usr/bin/env python3
"""Runs a command in a pseudo-terminal and plays a script against it.

usage: pty_run.py TIMEOUT ARGV...
stdin: a JSON list of steps, each {"expect": "text"} (wait until the
terminal output so far, from the end of the previous expect on, holds text)
or {"send": "text"} (typed, Tab and all). After the last step the terminal
is read until the command exits.
stdout: everything the terminal showed. Exit status: the command's, or 124
when the command ended before an expected text showed, or that or its exit
took longer than TIMEOUT seconds (then it is killed), with the missing text
on stderr.
"""
import json
import os
import pty
import select
import signal
import sys
import time


def main():
    timeout = float(sys.argv[1])
    argv = sys.argv[2:]
    steps = json.load(sys.stdin)
    pid, fd = pty.fork()
    if pid == 0:
        os.environ.setdefault("TERM", "vt100")
        os.execvp(argv[0], argv)
    out = b""
    mark = 0
    deadline = time.monotonic() + timeout

    def pump(wait):
        nonlocal out
        r, _, _ = select.select([fd], [], [], wait)
        if not r:
            return True
        try:
            data = os.read(fd, 65536)
        except OSError:
            return False
        if not data:
            return False
        out += data
        return True

    def give_up(what):
        sys.stdout.write(out.decode("utf-8", "replace"))
        sys.stderr.write("pty_run: timed out waiting for %r\n" % what)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        sys.exit(124)

    for step in steps:
        if "send" in step:
            os.write(fd, step["send"].encode())
            continue
        want = step["expect"].encode()
        while want not in out[mark:]:
            if time.monotonic() > deadline or not pump(0.1):
                give_up(step["expect"])
        mark = out.index(want, mark) + len(want)
        # a line editor shows its prompt, then puts the terminal in raw
        # mode: what is typed before that is line-buffered (a Tab is no Tab)
        time.sleep(0.3)
    while pump(0.1):
        if time.monotonic() > deadline:
            give_up("the exit")
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            while pump(0.05):
                pass
            break
    else:
        _, status = os.waitpid(pid, 0)
    sys.stdout.write(out.decode("utf-8", "replace"))
    sys.exit(os.waitstatus_to_exitcode(status))


main()
