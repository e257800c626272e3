//! Self-tests of the fault-injecting proxy (tests/src/proxy.rs) against a tiny
//! HTTP server: forwarding, counting, and each fault.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_e2e::proxy::{Fault, FaultProxy};

/// What the upstream saw: `METHOD PATH LEN` for each whole request,
/// `CUT METHOD PATH GOT/LEN` for a body that ended early.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

impl Seen {
    fn get(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Waits (up to 5 s) for the upstream thread to record `n` entries.
    fn wait_for(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.get().len() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.get()
    }
}

/// A keep-alive HTTP/1.1 server answering `200` with `METHOD PATH LEN` in a
/// Content-Length body; `/chunked` answers in chunks; a request with
/// `Expect: 100-continue` gets an interim 100 first, as real servers send.
fn upstream() -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Seen::default();
    let s = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let s = s.clone();
            std::thread::spawn(move || upstream_conn(conn, &s));
        }
    });
    (addr, seen)
}

fn upstream_conn(conn: TcpStream, seen: &Seen) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut w = conn;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let (mut len, mut expect) = (0usize, false);
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end().to_ascii_lowercase();
            if h.is_empty() {
                break;
            }
            if let Some(v) = h.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            expect |= h == "expect: 100-continue";
        }
        if expect {
            w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").unwrap();
        }
        let mut body = Vec::new();
        let got = (&mut r)
            .take(len as u64)
            .read_to_end(&mut body)
            .unwrap_or(0);
        if got < len {
            seen.0
                .lock()
                .unwrap()
                .push(format!("CUT {method} {path} {got}/{len}"));
            return;
        }
        let text = format!("{method} {path} {len}");
        seen.0.lock().unwrap().push(text.clone());
        let resp = if path == "/chunked" {
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n".to_string()
        } else {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}",
                text.len()
            )
        };
        if w.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// A keep-alive client connection speaking just enough HTTP/1.1.
struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Client {
    fn new(addr: &str) -> Client {
        let w = TcpStream::connect(addr).unwrap();
        w.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client {
            r: BufReader::new(w.try_clone().unwrap()),
            w,
        }
    }

    fn send(&mut self, method: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.w.write_all(head.as_bytes())?;
        self.w.write_all(body)?;
        self.response()
    }

    /// Reads one final response (skipping 1xx), its body decoded.
    fn response(&mut self) -> std::io::Result<(u16, String)> {
        loop {
            let mut status = String::new();
            if self.r.read_line(&mut status)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let code: u16 = status.split_whitespace().nth(1).unwrap().parse().unwrap();
            let (mut len, mut chunked) = (0usize, false);
            loop {
                let mut h = String::new();
                self.r.read_line(&mut h)?;
                let h = h.trim_end().to_ascii_lowercase();
                if h.is_empty() {
                    break;
                }
                if let Some(v) = h.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                chunked |= h == "transfer-encoding: chunked";
            }
            if code < 200 {
                continue;
            }
            let mut body = Vec::new();
            if chunked {
                loop {
                    let mut size = String::new();
                    self.r.read_line(&mut size)?;
                    let n = usize::from_str_radix(size.trim(), 16).unwrap();
                    let mut chunk = vec![0; n + 2];
                    self.r.read_exact(&mut chunk)?;
                    if n == 0 {
                        break;
                    }
                    body.extend_from_slice(&chunk[..n]);
                }
            } else {
                body.resize(len, 0);
                self.r.read_exact(&mut body)?;
            }
            return Ok((code, String::from_utf8(body).unwrap()));
        }
    }
}

fn pair(method: &str, path: &str) -> (String, String) {
    (method.to_string(), path.to_string())
}

#[test]
fn forwards_on_one_connection_and_counts_requests() {
    let (up, seen) = upstream();
    let proxy = FaultProxy::start(&up);
    assert_eq!(proxy.endpoint(), format!("http://{}", proxy.addr));
    let mut c = Client::new(&proxy.addr);
    assert_eq!(c.send("GET", "/a", b"").unwrap(), (200, "GET /a 0".into()));
    let body = vec![7u8; 100_000];
    assert_eq!(
        c.send("PUT", "/b?x=1", &body).unwrap(),
        (200, "PUT /b?x=1 100000".into())
    );
    assert_eq!(
        c.send("GET", "/chunked", b"").unwrap(),
        (200, "hello world".into())
    );
    assert_eq!(
        proxy.requests(),
        vec![
            pair("GET", "/a"),
            pair("PUT", "/b?x=1"),
            pair("GET", "/chunked")
        ]
    );
    assert_eq!(
        seen.get(),
        ["GET /a 0", "PUT /b?x=1 100000", "GET /chunked 0"]
    );
    proxy.clear_requests();
    assert!(proxy.requests().is_empty());
}

#[test]
fn status_fault_answers_without_forwarding() {
    let (up, seen) = upstream();
    let proxy = FaultProxy::start(&up);
    proxy.inject(Some("PUT"), Some("/key"), Fault::Status(503), 2);
    assert_eq!(proxy.pending(), 2);
    let mut c = Client::new(&proxy.addr);
    let (code, body) = c.send("PUT", "/bucket/key", b"data").unwrap();
    assert_eq!(code, 503);
    assert!(body.contains("<Code>SlowDown</Code>"), "{body}");
    // Another method or path does not match and does not use up the fault.
    assert_eq!(c.send("GET", "/bucket/key", b"").unwrap().0, 200);
    assert_eq!(c.send("PUT", "/bucket/other", b"").unwrap().0, 200);
    let (code, body) = c.send("PUT", "/bucket/key", b"data").unwrap();
    assert_eq!(code, 503, "{body}");
    assert_eq!(proxy.pending(), 0);
    assert_eq!(c.send("PUT", "/bucket/key", b"data").unwrap().0, 200);
    assert_eq!(
        seen.get(),
        [
            "GET /bucket/key 0",
            "PUT /bucket/other 0",
            "PUT /bucket/key 4"
        ]
    );
    assert_eq!(proxy.requests().len(), 5);

    proxy.inject(None, None, Fault::Status(412), 1);
    let (code, body) = c.send("PUT", "/bucket/key", b"").unwrap();
    assert_eq!(code, 412);
    assert!(body.contains("<Code>PreconditionFailed</Code>"), "{body}");
}

#[test]
fn reset_closes_without_an_answer() {
    let (up, seen) = upstream();
    let proxy = FaultProxy::start(&up);
    proxy.inject(None, Some("/boom"), Fault::Reset, 1);
    let mut c = Client::new(&proxy.addr);
    assert!(c.send("GET", "/boom", b"").is_err());
    let mut c = Client::new(&proxy.addr);
    assert_eq!(c.send("GET", "/boom", b"").unwrap().0, 200);
    assert_eq!(seen.get(), ["GET /boom 0"]);
    assert_eq!(
        proxy.requests(),
        vec![pair("GET", "/boom"), pair("GET", "/boom")]
    );
}

#[test]
fn delay_then_forward() {
    let (up, _seen) = upstream();
    let proxy = FaultProxy::start(&up);
    proxy.inject(
        Some("get"),
        None,
        Fault::Delay(Duration::from_millis(400)),
        1,
    );
    let mut c = Client::new(&proxy.addr);
    let t = Instant::now();
    assert_eq!(c.send("GET", "/slow", b"").unwrap().0, 200);
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn cut_mid_body_truncates_the_upload() {
    let (up, seen) = upstream();
    let proxy = FaultProxy::start(&up);
    proxy.inject(Some("PUT"), None, Fault::CutMidBody, 1);
    let mut c = Client::new(&proxy.addr);
    assert!(c.send("PUT", "/obj", &[1u8; 10_000]).is_err());
    assert_eq!(seen.wait_for(1), ["CUT PUT /obj 5000/10000"]);
}

#[test]
fn drop_response_forwards_but_does_not_answer() {
    let (up, seen) = upstream();
    let proxy = FaultProxy::start(&up);
    proxy.inject(Some("PUT"), None, Fault::DropResponse, 1);
    let mut c = Client::new(&proxy.addr);
    assert!(c.send("PUT", "/obj", &[1u8; 10]).is_err());
    assert_eq!(seen.wait_for(1), ["PUT /obj 10"]);
}

#[test]
fn expect_continue_is_honoured() {
    let (up, seen) = upstream();
    let proxy = FaultProxy::start(&up);
    let mut c = Client::new(&proxy.addr);
    let head =
        "PUT /e HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n";
    c.w.write_all(head.as_bytes()).unwrap();
    // A waiting client gets its 100 before it sends the body.
    let mut line = String::new();
    c.r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 100"), "{line:?}");
    c.r.read_line(&mut line).unwrap();
    c.w.write_all(b"abc").unwrap();
    assert_eq!(c.response().unwrap(), (200, "PUT /e 3".into()));
    // The server's own 100 was not passed on: the connection is in step.
    assert_eq!(
        c.send("GET", "/next", b"").unwrap(),
        (200, "GET /next 0".into())
    );
    assert_eq!(seen.get(), ["PUT /e 3", "GET /next 0"]);
}

#[test]
fn clear_drops_pending_faults() {
    let (up, _seen) = upstream();
    let proxy = FaultProxy::start(&up);
    proxy.inject(None, None, Fault::Status(500), 5);
    proxy.clear();
    assert_eq!(proxy.pending(), 0);
    assert_eq!(
        Client::new(&proxy.addr).send("GET", "/x", b"").unwrap().0,
        200
    );
}

#[test]
fn unreachable_upstream_is_a_bad_gateway() {
    // A port that was free a moment ago: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy = FaultProxy::start(&format!("http://127.0.0.1:{port}"));
    let (code, body) = Client::new(&proxy.addr).send("GET", "/x", b"").unwrap();
    assert_eq!(code, 502, "{body}");
}

#[test]
fn drop_closes_client_connections() {
    let (up, _seen) = upstream();
    let proxy = FaultProxy::start(&up);
    let addr = proxy.addr.clone();
    let mut c = Client::new(&addr);
    assert_eq!(c.send("GET", "/x", b"").unwrap().0, 200);
    drop(proxy);
    assert!(c.send("GET", "/x", b"").is_err());
    assert!(TcpStream::connect(&addr).is_err());
}
