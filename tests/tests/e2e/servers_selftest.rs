//! Self-tests of the server fixtures (tests/src/servers.rs): each real server
//! starts, answers once (S3 through the fault proxy), and is gone after drop.
//! Without a server installed these skip, except under CI=true.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use cairn_e2e::proxy::FaultProxy;
use cairn_e2e::servers::{S3Server, SshServer, raw_http};

/// An unsigned GET of the bucket through the proxy gets an HTTP answer, and
/// the fixture's URL and environment have the agreed shape.
fn check_s3(server: S3Server) {
    let proxy = FaultProxy::start(&server.endpoint);
    let (status, resp) = raw_http(&proxy.addr, "GET", &format!("/{}", server.bucket), b"")
        .unwrap_or_else(|e| panic!("{}: GET through the proxy: {e}", server.kind));
    assert!((200..600).contains(&status), "{resp}");
    assert_eq!(
        proxy.requests(),
        vec![("GET".to_string(), format!("/{}", server.bucket))]
    );
    if server.kind == "moto" {
        // moto takes unsigned requests: the bucket is there and listable.
        assert_eq!(status, 200, "{resp}");
        assert!(resp.contains("ListBucketResult"), "{resp}");
    } else {
        // s3s-fs checks signatures, so an unsigned request is refused, but
        // in S3's XML error format.
        assert!(resp.contains("<Error>"), "{resp}");
    }

    assert_eq!(
        server.url("db/app"),
        format!(
            "s3://{}/db/app?endpoint={}&path_style=true&region=us-east-1",
            server.bucket, server.endpoint
        )
    );
    assert!(
        server
            .url_via(&proxy, "x")
            .contains(&format!("endpoint={}&", proxy.endpoint()))
    );
    let env = server.env();
    for key in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
        "AWS_EC2_METADATA_DISABLED",
    ] {
        assert!(
            env.iter().any(|(k, _)| k == key),
            "{key} missing from {env:?}"
        );
    }

    server.new_bucket("second-bucket");
    if server.kind == "moto" {
        let (status, resp) = raw_http(server.addr(), "GET", "/second-bucket", b"").unwrap();
        assert_eq!(status, 200, "{resp}");
    }

    let addr = server.addr().to_string();
    drop(server);
    assert!(
        TcpStream::connect(&addr).is_err(),
        "{addr} still answers after drop"
    );
}

#[test]
fn s3s_fs_starts_answers_and_stops() {
    let server = S3Server::s3s_fs();
    assert_eq!(server.kind, "s3s-fs");
    check_s3(server);
}

#[test]
fn moto_starts_answers_and_stops() {
    if let Some(server) = S3Server::moto() {
        assert_eq!(server.kind, "moto");
        check_s3(server);
    }
}

/// Connects and reads the server's version line.
fn banner(port: u16) -> std::io::Result<(TcpStream, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf)?;
    Ok((s, String::from_utf8_lossy(&buf[..n]).into_owned()))
}

#[test]
fn sshd_starts_stops_and_restarts() {
    let Some(mut ssh) = SshServer::start() else {
        return;
    };
    let (mut open, line) = banner(ssh.port).unwrap();
    assert!(line.starts_with("SSH-2.0-"), "{line:?}");

    let kh = std::fs::read_to_string(&ssh.known_hosts).unwrap();
    assert!(
        kh.starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 ", ssh.port)),
        "{kh}"
    );
    assert!(ssh.key.is_file() && ssh.root.is_dir());
    let url = ssh.url("backups");
    let want = format!(
        "sftp://{}@127.0.0.1:{}{}/backups?key=",
        ssh.user,
        ssh.port,
        ssh.root.display()
    );
    assert!(url.starts_with(&want), "{url}");
    assert!(url.contains("&known_hosts="), "{url}");

    sftp_login(&ssh);

    // stop ends the open connection too, and refuses new ones.
    ssh.stop();
    let _ = open.write_all(b"SSH-2.0-probe\r\n");
    let mut buf = [0u8; 64];
    assert!(
        matches!(open.read(&mut buf), Ok(0) | Err(_)),
        "a session survived stop"
    );
    assert!(banner(ssh.port).is_err(), "sshd still answers after stop");

    ssh.restart();
    let (_, line) = banner(ssh.port).unwrap();
    assert!(line.starts_with("SSH-2.0-"), "{line:?}");
    // Same host key: the known_hosts written at start still verifies.
    sftp_login(&ssh);
}

/// Logs in with OpenSSH's sftp client (when installed) using only the
/// fixture's key and known_hosts, and writes into `root`: proves the
/// server accepts exactly what a cairn sftp:// URL will carry.
fn sftp_login(ssh: &SshServer) {
    if Command::new("sftp").arg("-V").output().is_err() {
        eprintln!("note: no sftp client; checked the banner only");
        return;
    }
    let mut child = Command::new("sftp")
        .args(["-b", "-", "-P", &ssh.port.to_string()])
        .arg("-i")
        .arg(&ssh.key)
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", ssh.known_hosts.display()))
        .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
        .args([
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-F",
            "/dev/null",
        ])
        .arg(format!("{}@127.0.0.1", ssh.user))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let dir = ssh.root.join("made-by-sftp");
    let _ = std::fs::remove_dir(&dir);
    let script = format!("mkdir {}\nls {}\n", dir.display(), ssh.root.display());
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sftp login failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.is_dir(), "sftp mkdir did not reach {}", dir.display());
}
