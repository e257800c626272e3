"""An SMTP server for cairn's end-to-end tests (tests/src/servers.rs starts
it): aiosmtpd on 127.0.0.1:PORT, writing each message it accepts to
DIR/<time>.eml (under a temporary name first, so a reader never sees half).
Usage: python3 smtp_sink.py PORT DIR"""

import os
import sys
import threading
import time

from aiosmtpd.controller import Controller

port, outdir = int(sys.argv[1]), sys.argv[2]


class Sink:
    async def handle_DATA(self, server, session, envelope):
        name = f"{time.time_ns()}"
        tmp = os.path.join(outdir, name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(b"X-Sink-Rcpt: " + ", ".join(envelope.rcpt_tos).encode() + b"\r\n")
            f.write(envelope.original_content or envelope.content)
        os.rename(tmp, os.path.join(outdir, name + ".eml"))
        return "250 Message accepted"


controller = Controller(Sink(), hostname="127.0.0.1", port=port)
controller.start()
print("ready", flush=True)
threading.Event().wait()
