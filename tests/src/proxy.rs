//! A fault-injecting HTTP/1.1 proxy for the S3 tests: it forwards each
//! request to a real server unchanged and, when told to, answers with an
//! error status, resets the connection, delays, cuts the upload short or
//! loses the response instead.
//!
//! Requests are forwarded byte for byte, `Host` included: the client signs
//! (SigV4) the proxy's `host:port`, which is what the client connected to, so
//! the server verifies the same signature it would see without the proxy.
//! Each request gets its own upstream connection; the client side keeps its
//! connection alive as long as the upstream response allows it.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// What to do to a matching request instead of (or before) forwarding it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and an S3-style XML error body; the request
    /// never reaches the server.
    Status(u16),
    /// Read the request, then close the connection with a TCP reset and no
    /// answer; the request never reaches the server.
    Reset,
    /// Wait, then forward as usual (for timeouts and slow servers).
    Delay(Duration),
    /// Forward the head and the first half of the body, then close both
    /// connections: the server sees a truncated upload, the client no answer.
    /// For a request without a body the server gets the whole request.
    CutMidBody,
    /// Forward the whole request and read the server's whole response, then
    /// close the client connection without answering: the operation happened
    /// but the client cannot know (a lost response).
    DropResponse,
}

/// A proxy on `127.0.0.1:PORT` in front of one upstream server. Stops
/// listening and closes its client connections when dropped.
pub struct FaultProxy {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

struct Rule {
    method: Option<String>,
    path_contains: Option<String>,
    fault: Fault,
    remaining: usize,
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    requests: Vec<(String, String)>,
    /// Clones of the open client sockets, to shut them down on drop.
    clients: HashMap<u64, TcpStream>,
    next_client: u64,
}

struct Shared {
    upstream: String,
    stopped: AtomicBool,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panicking connection thread must not wedge the test.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the request and takes the first matching fault, if any.
    fn take_fault(&self, method: &str, target: &str) -> Option<Fault> {
        let mut st = self.state();
        st.requests.push((method.to_string(), target.to_string()));
        let i = st.rules.iter().position(|r| {
            r.remaining > 0
                && r.method
                    .as_deref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(method))
                && r.path_contains
                    .as_deref()
                    .is_none_or(|p| target.contains(p))
        })?;
        let rule = &mut st.rules[i];
        rule.remaining -= 1;
        let fault = rule.fault.clone();
        if rule.remaining == 0 {
            st.rules.remove(i);
        }
        Some(fault)
    }
}

impl FaultProxy {
    /// Starts forwarding to `upstream`, `host:port` (an `http://host:port`
    /// endpoint is accepted too).
    pub fn start(upstream: &str) -> FaultProxy {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener =
            TcpListener::bind("127.0.0.1:0").expect("binding the fault proxy to 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("the proxy's address")
            .to_string();
        let shared = Arc::new(Shared {
            upstream,
            stopped: AtomicBool::new(false),
            state: Mutex::new(State::default()),
        });
        let sh = shared.clone();
        let accept = std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || accept_loop(listener, sh))
            .expect("spawning the proxy thread");
        FaultProxy {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:PORT`, the endpoint for clients.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Applies `fault` to the next `n` requests whose method matches (`None`:
    /// any) and whose path and query contain `path_contains` (`None`: any).
    /// Rules are tried in the order they were added; each request takes at
    /// most one fault.
    pub fn inject(
        &self,
        method: Option<&str>,
        path_contains: Option<&str>,
        fault: Fault,
        n: usize,
    ) {
        if n == 0 {
            return;
        }
        self.shared.state().rules.push(Rule {
            method: method.map(str::to_string),
            path_contains: path_contains.map(str::to_string),
            fault,
            remaining: n,
        });
    }

    /// Drops every fault not yet applied.
    pub fn clear(&self) {
        self.shared.state().rules.clear();
    }

    /// How many injected faults are still waiting for a request; 0 once all
    /// have fired.
    pub fn pending(&self) -> usize {
        self.shared.state().rules.iter().map(|r| r.remaining).sum()
    }

    /// `(method, path+query)` of every request seen so far, faulted or not,
    /// in arrival order.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.shared.state().requests.clone()
    }

    /// Forgets the requests seen so far (to count those of one step).
    pub fn clear_requests(&self) {
        self.shared.state().requests.clear();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for (_, c) in self.shared.state().clients.drain() {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stopped.load(Ordering::SeqCst) {
            break;
        }
        let Ok(conn) = conn else { continue };
        let _ = conn.set_nodelay(true);
        let id = {
            let mut st = shared.state();
            st.next_client += 1;
            if let Ok(c) = conn.try_clone() {
                let id = st.next_client;
                st.clients.insert(id, c);
            }
            st.next_client
        };
        let sh = shared.clone();
        let _ = std::thread::Builder::new()
            .name("fault-proxy-conn".into())
            .spawn(move || {
                let outcome = serve(&sh, &conn).unwrap_or(End::Close);
                // Our clone must go first: the socket closes (and a reset is
                // sent) only when its last descriptor does.
                drop(sh.state().clients.remove(&id));
                if outcome == End::Reset {
                    set_linger_zero(&conn);
                }
                drop(conn);
            });
    }
}

#[derive(PartialEq, Eq)]
enum End {
    Close,
    Reset,
}

/// SO_LINGER with a zero timeout: close() then sends RST instead of FIN.
fn set_linger_zero(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// The parts of a request head the proxy acts on, plus its raw bytes.
struct Head {
    raw: Vec<u8>,
    method: String,
    target: String,
    content_length: Option<u64>,
    chunked: bool,
    expect_continue: bool,
    close: bool,
    status: u16,
}

/// Reads a request or response head. None on a clean end of stream before
/// its first byte.
fn read_head(r: &mut impl BufRead, request: bool) -> io::Result<Option<Head>> {
    let mut raw = Vec::new();
    let mut first = String::new();
    // Tolerate blank lines between messages (RFC 9112 §2.2).
    while first.is_empty() {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line)? == 0 {
            if raw.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "end of stream in a head",
            ));
        }
        raw.extend_from_slice(&line);
        first = String::from_utf8_lossy(&line).trim().to_string();
    }
    let mut head = Head {
        raw: Vec::new(),
        method: String::new(),
        target: String::new(),
        content_length: None,
        chunked: false,
        expect_continue: false,
        close: false,
        status: 0,
    };
    let mut parts = first.split_whitespace();
    if request {
        head.method = parts.next().unwrap_or_default().to_string();
        head.target = parts.next().unwrap_or_default().to_string();
        // HTTP/1.0 closes after each message unless told otherwise.
        head.close = parts.next() == Some("HTTP/1.0");
    } else {
        let version = parts.next().unwrap_or_default();
        head.status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        head.close = version == "HTTP/1.0";
        if head.status == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {first:?}"),
            ));
        }
    }
    // Only the leading blank lines are dropped from what is forwarded.
    raw.clear();
    raw.extend_from_slice(first.as_bytes());
    raw.extend_from_slice(b"\r\n");
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "end of stream in a head",
            ));
        }
        raw.extend_from_slice(&line);
        if raw.len() > 256 * 1024 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "head over 256 KiB",
            ));
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        if text.is_empty() {
            break;
        }
        let Some((name, value)) = text.split_once(':') else {
            continue;
        };
        let value = value.trim().to_ascii_lowercase();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => head.content_length = value.parse().ok(),
            "transfer-encoding" => head.chunked = value.contains("chunked"),
            "expect" => head.expect_continue = value == "100-continue",
            "connection" => {
                if value.contains("close") {
                    head.close = true;
                } else if value.contains("keep-alive") {
                    head.close = false;
                }
            }
            _ => {}
        }
    }
    head.raw = raw;
    Ok(Some(head))
}

/// A request's body, still in its transfer encoding.
fn read_body(r: &mut impl BufRead, head: &Head) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    if head.chunked {
        copy_chunked(r, &mut body)?;
    } else if let Some(n) = head.content_length {
        (&mut *r).take(n).read_to_end(&mut body)?;
        if body.len() as u64 != n {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "request body cut short",
            ));
        }
    }
    Ok(body)
}

/// Copies a chunked body verbatim up to and including its trailers.
fn copy_chunked(r: &mut impl BufRead, w: &mut impl Write) -> io::Result<()> {
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "chunked body cut short",
            ));
        }
        w.write_all(&line)?;
        let text = String::from_utf8_lossy(&line);
        let size_text = text.split(';').next().unwrap_or_default().trim();
        let size = u64::from_str_radix(size_text, 16).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad chunk size {size_text:?}"),
            )
        })?;
        if size == 0 {
            // Trailers, then a blank line.
            loop {
                let mut t = Vec::new();
                if r.read_until(b'\n', &mut t)? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "chunked trailers cut short",
                    ));
                }
                w.write_all(&t)?;
                if t == b"\r\n" || t == b"\n" {
                    return Ok(());
                }
            }
        }
        // The data and its CRLF.
        let copied = io::copy(&mut (&mut *r).take(size + 2), w)?;
        if copied != size + 2 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "chunk cut short",
            ));
        }
    }
}

/// Serves one client connection, request after request.
fn serve(shared: &Shared, client: &TcpStream) -> io::Result<End> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut writer = client.try_clone()?;
    loop {
        let Some(req) = read_head(&mut reader, true)? else {
            return Ok(End::Close);
        };
        // The whole body is read before anything is forwarded (faults act
        // on whole requests), so a client waiting for 100 Continue gets it
        // from us; the server's own 100 is then skipped.
        if req.expect_continue {
            writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let body = read_body(&mut reader, &req)?;
        match shared.take_fault(&req.method, &req.target) {
            Some(Fault::Status(code)) => {
                write_error(&mut writer, &req, code)?;
                if req.close {
                    return Ok(End::Close);
                }
                continue;
            }
            Some(Fault::Reset) => return Ok(End::Reset),
            Some(Fault::CutMidBody) => {
                if let Ok(mut up) = TcpStream::connect(&shared.upstream) {
                    let _ = up.write_all(&req.raw);
                    let _ = up.write_all(&body[..body.len() / 2]);
                    let _ = up.flush();
                    // Give the bytes a moment on the wire before the close,
                    // so the server sees a truncated body, not nothing.
                    std::thread::sleep(Duration::from_millis(20));
                    let _ = up.shutdown(Shutdown::Both);
                }
                return Ok(End::Close);
            }
            Some(Fault::DropResponse) => {
                let _ = forward(shared, &req, &body, &mut io::sink());
                return Ok(End::Close);
            }
            Some(Fault::Delay(d)) => std::thread::sleep(d),
            None => {}
        }
        let keep_alive = match forward(shared, &req, &body, &mut writer) {
            Ok(k) => k,
            Err(Upstream::Connect(e)) => {
                // Nothing is listening (a stopped server): say so the way a
                // gateway would, rather than as a dropped connection.
                let msg = format!("upstream {}: {e}", shared.upstream);
                write_status(&mut writer, &req, 502, "BadGateway", &msg, true)?;
                false
            }
            Err(Upstream::Io(e)) => return Err(e),
        };
        if !keep_alive || req.close {
            return Ok(End::Close);
        }
    }
}

enum Upstream {
    Connect(io::Error),
    Io(io::Error),
}

impl From<io::Error> for Upstream {
    fn from(e: io::Error) -> Self {
        Upstream::Io(e)
    }
}

/// Sends the request upstream on a fresh connection and relays the response
/// to `out`. Returns whether the client connection may stay open.
fn forward(
    shared: &Shared,
    req: &Head,
    body: &[u8],
    out: &mut impl Write,
) -> Result<bool, Upstream> {
    let up = TcpStream::connect(&shared.upstream).map_err(Upstream::Connect)?;
    let _ = up.set_nodelay(true);
    // Generous, but a hung server must not hang the test forever.
    up.set_read_timeout(Some(Duration::from_secs(120)))?;
    (&up).write_all(&req.raw)?;
    (&up).write_all(body)?;
    let mut ur = BufReader::new(&up);
    let resp = loop {
        let Some(resp) = read_head(&mut ur, false)? else {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed without answering",
            )
            .into());
        };
        // Interim responses (100 Continue): the client got ours already.
        if !(100..200).contains(&resp.status) || resp.status == 101 {
            break resp;
        }
    };
    out.write_all(&resp.raw)?;
    let bodiless =
        req.method.eq_ignore_ascii_case("HEAD") || resp.status == 204 || resp.status == 304;
    if bodiless {
        out.flush()?;
        return Ok(!resp.close);
    }
    if resp.chunked {
        copy_chunked(&mut ur, out)?;
    } else if let Some(n) = resp.content_length {
        let copied = io::copy(&mut (&mut ur).take(n), out)?;
        if copied != n {
            return Err(
                io::Error::new(io::ErrorKind::UnexpectedEof, "response body cut short").into(),
            );
        }
    } else {
        // No length: the body runs to the end of the stream, and so must
        // the client's connection.
        io::copy(&mut ur, out)?;
        out.flush()?;
        return Ok(false);
    }
    out.flush()?;
    Ok(!resp.close)
}

/// The S3 error code a real server would give with `status`.
fn s3_code(status: u16) -> &'static str {
    match status {
        400 => "BadRequest",
        403 => "AccessDenied",
        404 => "NoSuchKey",
        409 => "OperationAborted",
        412 => "PreconditionFailed",
        416 => "InvalidRange",
        500 => "InternalError",
        501 => "NotImplemented",
        503 => "SlowDown",
        _ => "InjectedFault",
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        412 => "Precondition Failed",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Injected Fault",
    }
}

fn write_error(w: &mut impl Write, req: &Head, status: u16) -> io::Result<()> {
    write_status(
        w,
        req,
        status,
        s3_code(status),
        "injected by the cairn test proxy",
        req.close,
    )
}

fn write_status(
    w: &mut impl Write,
    req: &Head,
    status: u16,
    code: &str,
    message: &str,
    close: bool,
) -> io::Result<()> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{}</Message>\
         <Resource>{}</Resource><RequestId>cairn-fault-proxy</RequestId></Error>",
        xml_escape(message),
        xml_escape(&req.target)
    );
    let head_only = req.method.eq_ignore_ascii_case("HEAD");
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/xml\r\nx-amz-request-id: cairn-fault-proxy\r\n\
         Content-Length: {}\r\n",
        reason(status),
        if head_only { 0 } else { body.len() }
    );
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&body);
    }
    w.write_all(out.as_bytes())?;
    w.flush()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
