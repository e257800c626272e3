"""An SMTP server for cairn's end-to-end tests (tests/src/servers.rs starts
it): aiosmtpd on 127.0.0.1:PORT, writing each message it accepts to
DIR/<time>.eml (under a temporary name first, so a reader never sees half).
Usage: python3 smtp_sink.py PORT DIR [CERT KEY USER PASSWORD]

With CERT KEY USER PASSWORD: STARTTLS with that certificate is required
before anything else, and AUTH (PLAIN or LOGIN) as USER/PASSWORD before
MAIL; each message records that it came over TLS by that user."""

import os
import ssl
import sys
import threading
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

port, outdir = int(sys.argv[1]), sys.argv[2]
secure = sys.argv[3:7]


class Sink:
    async def handle_DATA(self, server, session, envelope):
        name = f"{time.time_ns()}"
        tmp = os.path.join(outdir, name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(b"X-Sink-Rcpt: " + ", ".join(envelope.rcpt_tos).encode() + b"\r\n")
            if secure:
                f.write(b"X-Sink-TLS: " + (b"yes" if session.ssl else b"no") + b"\r\n")
                f.write(b"X-Sink-Auth: " + (session.auth_data or b"-") + b"\r\n")
            f.write(envelope.original_content or envelope.content)
        os.rename(tmp, os.path.join(outdir, name + ".eml"))
        return "250 Message accepted"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login.decode() == secure[2]
        and auth_data.password.decode() == secure[3]
    )
    return AuthResult(success=ok, auth_data=auth_data.login if ok else None)


if secure:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(secure[0], secure[1])
    controller = Controller(
        Sink(),
        hostname="127.0.0.1",
        port=port,
        tls_context=ctx,
        require_starttls=True,
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=True,
    )
else:
    controller = Controller(Sink(), hostname="127.0.0.1", port=port)
controller.start()
print("ready", flush=True)
threading.Event().wait()
