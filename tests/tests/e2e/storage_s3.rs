//! The S3 backend (host-native/src/storage/s3.rs) against real servers,
//! s3s-fs and moto: round trips small and multipart, create-only conflicts,
//! listing, batch deletes, wrong credentials, abandoned uploads, sweeping
//! unfinished uploads. Without a server installed each test skips, except
//! under CI=true (tests/src/servers.rs).

use std::io;
use std::sync::OnceLock;

use bytes::Bytes;
use cairn::storage::{self, Body, Chunk, Cond, Location, Put, SharedBackend};
use cairn_e2e::proxy::{Fault, FaultProxy};
use cairn_e2e::servers::{S3Server, raw_http};
use futures::StreamExt;
use tokio::sync::mpsc;

const MIB: usize = 1 << 20;

/// Credentials reach the in-process SDK through a profile file, not through
/// AWS_ACCESS_KEY_ID: the default chain reads the environment before any
/// profile, so with keys in the environment `profile=cairn-bad` would never
/// be used. Set once, before any test starts a server or a client.
fn aws_profiles(server: &S3Server) {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir for AWS profiles");
        let creds = dir.path().join("credentials");
        std::fs::write(
            &creds,
            format!(
                "[cairn-good]\naws_access_key_id = {ak}\naws_secret_access_key = {sk}\n\n\
                 [cairn-bad]\naws_access_key_id = {ak}\naws_secret_access_key = not-the-secret\n",
                ak = server.access_key,
                sk = server.secret_key
            ),
        )
        .expect("writing the credentials file");
        let config = dir.path().join("config");
        std::fs::write(
            &config,
            "[profile cairn-good]\nregion = us-east-1\n\n[profile cairn-bad]\nregion = us-east-1\n",
        )
        .expect("writing the config file");
        // SAFETY: every test calls this first, under the OnceLock, before it
        // starts threads of its own; the only other threads are libtest's
        // other tests, blocked on this same OnceLock or not yet past it.
        unsafe {
            for k in [
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_TOKEN",
                "AWS_PROFILE",
                "AWS_DEFAULT_PROFILE",
            ] {
                std::env::remove_var(k);
            }
            std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", &creds);
            std::env::set_var("AWS_CONFIG_FILE", &config);
            std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
            // Failures in these tests are meant to be quick.
            std::env::set_var("CAIRN_RETRY_ATTEMPTS", "3");
            std::env::set_var("CAIRN_RETRY_BASE_MS", "20");
        }
        dir
    });
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn open(server: &S3Server, prefix: &str, extra: &str) -> SharedBackend {
    open_url(server, &server.url(prefix), extra).await
}

async fn open_url(server: &S3Server, base: &str, extra: &str) -> SharedBackend {
    let url = format!("{base}&profile=cairn-good&part_size=5&parts=3{extra}");
    let loc = Location::parse(&url).unwrap_or_else(|e| panic!("{url}: {e}"));
    storage::open(&loc)
        .await
        .unwrap_or_else(|e| panic!("{}: open {url}: {e:#}", server.kind))
}

/// Bytes that differ at every offset, so a misplaced part shows.
fn pattern(len: usize, seed: u8) -> Bytes {
    let mut v = Vec::with_capacity(len);
    let mut x: u32 = 0x9e37_79b9 ^ u32::from(seed);
    for _ in 0..len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.push(x as u8);
    }
    Bytes::from(v)
}

/// An upload fed from a task in 1 MiB pieces, like the bridge does;
/// `end: false` drops the sender half-way (an abandoned upload).
async fn upload(
    b: &SharedBackend,
    key: &str,
    data: Bytes,
    cond: Cond,
    end: bool,
) -> io::Result<Put> {
    let (tx, rx) = mpsc::channel(4);
    let feeder = tokio::spawn(async move {
        let mut off = 0;
        while off < data.len() {
            let n = MIB.min(data.len() - off);
            if tx
                .send(Chunk::Data(data.slice(off..off + n)))
                .await
                .is_err()
            {
                return;
            }
            off += n;
        }
        if end {
            let _ = tx.send(Chunk::End).await;
        }
    });
    let r = b.upload(key, Body::new(rx), cond).await;
    let _ = feeder.await;
    r
}

async fn read_all(b: &SharedBackend, key: &str) -> io::Result<Vec<u8>> {
    let mut s = b.read(key).await?;
    let mut out = Vec::new();
    while let Some(piece) = s.next().await {
        out.extend_from_slice(&piece?);
    }
    Ok(out)
}

async fn round_trips(server: &S3Server) {
    let kind = server.kind;
    let b = open(server, "rt/", "").await;
    assert_eq!(b.scheme(), "s3");
    assert_eq!(
        b.describe("data/x"),
        format!("s3://{}/rt/data/x", server.bucket)
    );

    // Small objects.
    let small = pattern(1000, 1);
    assert_eq!(
        b.put("small", small.clone(), Cond::CreateOnly)
            .await
            .unwrap(),
        Put::Written
    );
    assert_eq!(
        b.get("small").await.unwrap().as_deref(),
        Some(&small[..]),
        "{kind}"
    );
    assert_eq!(read_all(&b, "small").await.unwrap(), small, "{kind}");
    assert_eq!(b.get("absent").await.unwrap(), None, "{kind}");
    let e = b
        .read("absent")
        .await
        .err()
        .expect("reading an absent object fails");
    assert_eq!(e.kind(), io::ErrorKind::NotFound, "{kind}: {e}");
    assert!(e.to_string().contains("rt/absent"), "{kind}: {e}");

    // Create-only never replaces; overwrite does.
    let other = pattern(1000, 2);
    assert_eq!(
        b.put("small", other.clone(), Cond::CreateOnly)
            .await
            .unwrap(),
        Put::Exists,
        "{kind}"
    );
    assert_eq!(
        b.get("small").await.unwrap().as_deref(),
        Some(&small[..]),
        "{kind}"
    );
    assert_eq!(
        b.put("small", other.clone(), Cond::Overwrite)
            .await
            .unwrap(),
        Put::Written
    );
    assert_eq!(
        b.get("small").await.unwrap().as_deref(),
        Some(&other[..]),
        "{kind}"
    );

    // An empty object and a body that fits one part: a single PutObject.
    assert_eq!(
        upload(&b, "empty", Bytes::new(), Cond::CreateOnly, true)
            .await
            .unwrap(),
        Put::Written
    );
    assert_eq!(
        b.get("empty").await.unwrap().as_deref(),
        Some(&b""[..]),
        "{kind}"
    );
    let one = pattern(5 * MIB, 3);
    assert_eq!(
        upload(&b, "one-part", one.clone(), Cond::CreateOnly, true)
            .await
            .unwrap(),
        Put::Written
    );
    assert!(
        read_all(&b, "one-part").await.unwrap() == one,
        "{kind}: one-part differs"
    );
    assert_eq!(
        upload(&b, "one-part", pattern(10, 4), Cond::CreateOnly, true)
            .await
            .unwrap(),
        Put::Exists
    );

    // 17 MiB in 5 MiB parts: four parts, three in flight.
    let big = pattern(17 * MIB, 5);
    assert_eq!(
        upload(&b, "big", big.clone(), Cond::CreateOnly, true)
            .await
            .unwrap(),
        Put::Written
    );
    assert!(
        read_all(&b, "big").await.unwrap() == big,
        "{kind}: big differs after upload"
    );
    assert!(
        b.get("big").await.unwrap().is_some_and(|g| g == big),
        "{kind}"
    );
    // Create-only over it, multipart too: Exists, and the object is untouched.
    let big2 = pattern(11 * MIB, 6);
    assert_eq!(
        upload(&b, "big", big2.clone(), Cond::CreateOnly, true)
            .await
            .unwrap(),
        Put::Exists,
        "{kind}"
    );
    assert!(
        read_all(&b, "big").await.unwrap() == big,
        "{kind}: create-only replaced big"
    );
    assert_eq!(
        upload(&b, "big", big2.clone(), Cond::Overwrite, true)
            .await
            .unwrap(),
        Put::Written
    );
    assert!(
        read_all(&b, "big").await.unwrap() == big2,
        "{kind}: overwrite did not land"
    );
    // Nothing of those uploads is left unfinished.
    assert_eq!(b.sweep_temps(0).await.unwrap(), 0, "{kind}");

    // Keys are checked like everywhere else.
    let e = b
        .put("../x", Bytes::new(), Cond::Overwrite)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
}

async fn listing_and_deleting(server: &S3Server) {
    let kind = server.kind;
    let b = open(server, "ls/", "").await;
    for k in [
        "log/0003",
        "log/0001",
        "log/0002",
        "log/sub/deeper",
        "log/.hidden",
        "top",
    ] {
        b.put(k, Bytes::from(k.to_string()), Cond::Overwrite)
            .await
            .unwrap();
    }
    let keys = |v: Vec<storage::ObjectInfo>| v.into_iter().map(|o| o.key).collect::<Vec<_>>();
    let all = b.list("log/", None).await.unwrap();
    assert_eq!(
        keys(all.clone()),
        ["log/0001", "log/0002", "log/0003"],
        "{kind}"
    );
    assert!(
        all.iter()
            .all(|o| o.size == 8 && o.modified_ms.is_some_and(|t| t > 1_600_000_000_000)),
        "{kind}: {all:?}"
    );
    assert_eq!(
        keys(b.list("log/", Some("log/0001")).await.unwrap()),
        ["log/0002", "log/0003"],
        "{kind}"
    );
    assert_eq!(
        keys(b.list("log/", Some("log/0003")).await.unwrap()),
        Vec::<String>::new(),
        "{kind}"
    );
    assert_eq!(keys(b.list("", None).await.unwrap()), ["top"], "{kind}");
    assert_eq!(
        keys(b.list("nothing/", None).await.unwrap()),
        Vec::<String>::new(),
        "{kind}"
    );

    // More than one DeleteObjects batch (1000 keys), plus an absent key.
    let many: Vec<String> = (0..1003).map(|i| format!("many/{i:05}")).collect();
    let mut puts = futures::stream::iter(many.clone())
        .map(|k| {
            let b = b.clone();
            async move { b.put(&k, Bytes::from_static(b"x"), Cond::Overwrite).await }
        })
        .buffer_unordered(16);
    while let Some(r) = puts.next().await {
        r.unwrap();
    }
    let listed = b.list("many/", None).await.unwrap();
    assert_eq!(keys(listed), many, "{kind}: listing across pages");
    let mut doomed = many.clone();
    doomed.push("many/absent".into());
    doomed.push("log/0002".into());
    b.delete(&doomed)
        .await
        .unwrap_or_else(|e| panic!("{kind}: {e}"));
    assert!(b.list("many/", None).await.unwrap().is_empty(), "{kind}");
    assert_eq!(
        keys(b.list("log/", None).await.unwrap()),
        ["log/0001", "log/0003"],
        "{kind}"
    );
    b.delete(&["log/0001".to_string()]).await.unwrap();
    assert_eq!(b.get("log/0001").await.unwrap(), None, "{kind}");
}

async fn abandoned_uploads(server: &S3Server) {
    let kind = server.kind;
    let b = open(server, "ab/", "").await;
    // Small (would have been one PutObject) and large (multipart under way).
    for (key, len) in [("small", 3 * MIB), ("large", 12 * MIB)] {
        let e = upload(&b, key, pattern(len, 7), Cond::CreateOnly, false)
            .await
            .expect_err("an abandoned upload fails");
        assert!(e.to_string().contains("abandoned"), "{kind}: {e}");
        assert_eq!(
            b.get(key).await.unwrap(),
            None,
            "{kind}: {key} was published"
        );
    }
    assert!(b.list("", None).await.unwrap().is_empty(), "{kind}");
    // The multipart upload was aborted, not left behind.
    assert_eq!(b.sweep_temps(0).await.unwrap(), 0, "{kind}");
}

async fn wrong_places(server: &S3Server) {
    let kind = server.kind;
    let url = format!(
        "s3://no-such-bucket/p?endpoint={}&path_style=true&profile=cairn-good",
        server.endpoint
    );
    let b = storage::open(&Location::parse(&url).unwrap())
        .await
        .unwrap();
    let e = b
        .list("", None)
        .await
        .expect_err("listing a missing bucket fails");
    assert_eq!(e.kind(), io::ErrorKind::NotFound, "{kind}: {e}");
    assert!(
        e.to_string()
            .contains("bucket \"no-such-bucket\" does not exist"),
        "{kind}: {e}"
    );
    // s3s-fs answers GetObject in a missing bucket with NoSuchKey (and
    // creates the bucket on PutObject); moto, like AWS, says NoSuchBucket.
    if kind == "moto" {
        let e = b
            .get("x")
            .await
            .expect_err("a missing bucket is an error, not an absent object");
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{kind}: {e}");
        assert!(
            e.to_string()
                .contains("bucket \"no-such-bucket\" does not exist"),
            "{kind}: {e}"
        );
    }

    let e = match storage::open(
        &Location::parse(&format!("{}&profile=cairn-none", server.url("p"))).unwrap(),
    )
    .await
    {
        Ok(_) => panic!("{kind}: a missing profile should fail at open"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        e.contains("check the credentials") && e.contains("cairn-none"),
        "{kind}: {e}"
    );
}

async fn wrong_secret(server: &S3Server) {
    let url = format!("{}&profile=cairn-bad", server.url("p"));
    let b = storage::open(&Location::parse(&url).unwrap())
        .await
        .unwrap();
    for e in [
        b.get("x").await.unwrap_err(),
        b.put("x", Bytes::from_static(b"x"), Cond::CreateOnly)
            .await
            .unwrap_err(),
        b.list("", None).await.unwrap_err(),
    ] {
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(
                "check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the profile"
            ),
            "{msg}"
        );
        assert!(msg.contains("HTTP 403"), "{msg}");
        assert!(
            !msg.contains("not-the-secret"),
            "the secret leaked into {msg}"
        );
    }
}

/// How many requests seen by `proxy` have `method` and contain `needle`.
fn count(proxy: &FaultProxy, method: &str, needle: &str) -> usize {
    proxy
        .requests()
        .iter()
        .filter(|(m, p)| m == method && p.contains(needle))
        .count()
}

/// Retries through the fault proxy: a failed part is resent alone, a lost
/// answer to a create-only write still reports Written, permanent errors
/// are not retried, and a server without DeleteObjects gets single deletes.
async fn faults(server: &S3Server) {
    let kind = server.kind;
    let proxy = FaultProxy::start(&server.endpoint);
    let b = open_url(server, &server.url_via(&proxy, "ft/"), "").await;

    // 12 MiB: three parts; the second fails once (503 SlowDown) and then
    // once more with a connection reset.
    let big = pattern(12 * MIB, 8);
    proxy.inject(Some("PUT"), Some("partNumber=2"), Fault::Status(503), 1);
    proxy.inject(Some("PUT"), Some("partNumber=2"), Fault::Reset, 1);
    assert_eq!(
        upload(&b, "big", big.clone(), Cond::CreateOnly, true)
            .await
            .unwrap(),
        Put::Written,
        "{kind}"
    );
    assert_eq!(proxy.pending(), 0, "{kind}: the faults fired");
    assert_eq!(
        count(&proxy, "POST", "uploads"),
        1,
        "{kind}: one multipart upload, never restarted"
    );
    assert_eq!(
        count(&proxy, "PUT", "partNumber=1"),
        1,
        "{kind}: part 1 sent once"
    );
    assert_eq!(
        count(&proxy, "PUT", "partNumber=2"),
        3,
        "{kind}: part 2 resent alone"
    );
    assert_eq!(
        count(&proxy, "PUT", "partNumber=3"),
        1,
        "{kind}: part 3 sent once"
    );
    assert!(
        read_all(&b, "big").await.unwrap() == big,
        "{kind}: big differs"
    );
    // Reads go in ranges of part_size (5 MiB here), in order: 12 MiB is
    // three GETs; a reset one is asked again alone.
    proxy.clear_requests();
    proxy.inject(Some("GET"), Some("ft/big"), Fault::Reset, 1);
    assert!(
        read_all(&b, "big").await.unwrap() == big,
        "{kind}: big differs when read in ranges"
    );
    assert_eq!(proxy.pending(), 0, "{kind}");
    assert_eq!(
        count(&proxy, "GET", "ft/big"),
        4,
        "{kind}: three ranges, the first one twice"
    );

    // A lost answer to a create-only PUT: the retry meets our own object
    // (412) and must still report Written, or a commit would move on to
    // the next slot and land twice.
    proxy.inject(Some("PUT"), Some("ft/small"), Fault::DropResponse, 1);
    let small = pattern(100, 9);
    assert_eq!(
        b.put("small", small.clone(), Cond::CreateOnly)
            .await
            .unwrap(),
        Put::Written,
        "{kind}"
    );
    assert_eq!(proxy.pending(), 0, "{kind}");
    assert_eq!(b.get("small").await.unwrap().as_deref(), Some(&small[..]));
    assert_eq!(
        b.put("small", small.clone(), Cond::CreateOnly)
            .await
            .unwrap(),
        Put::Exists,
        "{kind}"
    );

    // The same for the completion of a multipart upload.
    proxy.inject(Some("POST"), Some("uploadId="), Fault::DropResponse, 1);
    let big3 = pattern(11 * MIB, 10);
    assert_eq!(
        upload(&b, "big3", big3.clone(), Cond::CreateOnly, true)
            .await
            .unwrap(),
        Put::Written,
        "{kind}"
    );
    assert_eq!(proxy.pending(), 0, "{kind}");
    assert!(
        read_all(&b, "big3").await.unwrap() == big3,
        "{kind}: big3 differs"
    );

    // A part upload cut half-way is resent.
    proxy.inject(Some("PUT"), Some("partNumber=1"), Fault::CutMidBody, 1);
    assert_eq!(
        upload(&b, "big4", big3.clone(), Cond::Overwrite, true)
            .await
            .unwrap(),
        Put::Written,
        "{kind}"
    );
    assert!(
        read_all(&b, "big4").await.unwrap() == big3,
        "{kind}: big4 differs"
    );

    // Reads: a reset is retried; a 403 is not; a 500 that persists ends
    // with the count of tries.
    proxy.inject(Some("GET"), Some("ft/small"), Fault::Reset, 1);
    assert_eq!(
        b.get("small").await.unwrap().as_deref(),
        Some(&small[..]),
        "{kind}"
    );
    proxy.clear_requests();
    proxy.inject(Some("GET"), Some("ft/small"), Fault::Status(403), 1);
    let e = b.get("small").await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{kind}: {e}");
    assert!(e.to_string().contains("check the credentials"), "{e}");
    assert_eq!(
        count(&proxy, "GET", "ft/small"),
        1,
        "{kind}: a 403 is not retried"
    );
    proxy.inject(Some("GET"), Some("ft/small"), Fault::Status(500), 10);
    let e = b.read("small").await.err().expect("a persistent 500 fails");
    assert!(
        e.to_string().contains("HTTP 500") && e.to_string().contains("after 3 tries"),
        "{kind}: {e}"
    );
    proxy.clear();

    // No DeleteObjects (501): single deletes instead, from then on.
    proxy.inject(Some("POST"), Some("delete"), Fault::Status(501), 1);
    b.delete(&["small".into(), "big".into(), "absent".into()])
        .await
        .unwrap();
    assert_eq!(b.get("small").await.unwrap(), None, "{kind}");
    assert_eq!(b.get("big").await.unwrap(), None, "{kind}");
    assert!(
        count(&proxy, "DELETE", "ft/big") >= 1,
        "{kind}: single deletes"
    );

    // Nothing unfinished is left behind by all that.
    assert_eq!(b.sweep_temps(0).await.unwrap(), 0, "{kind}");
}

/// An object replaced while a streaming read is under way: the later
/// ranges (asked for with If-Match: the first one's ETag) fail with a clear
/// error instead of mixing two objects.
async fn replaced_while_read(server: &S3Server) {
    let kind = server.kind;
    // One range in flight, so most of the object is asked for after the
    // overwrite.
    let b = open(server, "rw/", "&parts=1").await;
    let first = pattern(30 * MIB, 11);
    upload(&b, "obj", first.clone(), Cond::CreateOnly, true)
        .await
        .unwrap();
    let mut s = b.read("obj").await.unwrap();
    let head = s.next().await.unwrap().unwrap();
    assert_eq!(head.len(), 5 * MIB, "{kind}: the first range");
    upload(&b, "obj", pattern(30 * MIB, 12), Cond::Overwrite, true)
        .await
        .unwrap();
    let mut got = head.len();
    let e = loop {
        match s.next().await {
            Some(Ok(piece)) => got += piece.len(),
            Some(Err(e)) => break e,
            None => {
                panic!("{kind}: read {got} bytes of an object replaced mid-read without an error")
            }
        }
    };
    assert!(
        e.to_string()
            .contains("was replaced while it was being read"),
        "{kind}: {e}"
    );
    assert!(got < first.len(), "{kind}");
    // An empty object reads as no bytes (a ranged GET of it is a 416).
    upload(&b, "empty", Bytes::new(), Cond::CreateOnly, true)
        .await
        .unwrap();
    assert!(read_all(&b, "empty").await.unwrap().is_empty(), "{kind}");
}

/// Writers racing to create one key, as a killed replicator's last request
/// and its successor's can: exactly one is told it wrote, the others that
/// the key exists, and the key reads back as the winner's bytes, checksum
/// and all. Against the s3s-fs binary (it checks `If-None-Match`, then
/// writes) this fails within a few rounds; the tests' server commits each
/// PUT whole, as S3 does (tests/src/bin/cairn-test-s3.rs).
async fn racing_creates(server: &S3Server) {
    let kind = server.kind;
    let b = open(server, "race/", "").await;
    for round in 0..20u8 {
        let key = format!("k{round}");
        let bodies: Vec<Bytes> = (0..6).map(|w| pattern(256 << 10, round * 8 + w)).collect();
        let puts = bodies.iter().map(|body| {
            let (b, key, body) = (b.clone(), key.clone(), body.clone());
            tokio::spawn(async move { b.put(&key, body, Cond::CreateOnly).await })
        });
        let results = futures::future::join_all(puts).await;
        let written: Vec<usize> = results
            .into_iter()
            .enumerate()
            .filter_map(|(w, r)| match r.expect("the put task") {
                Ok(Put::Written) => Some(w),
                Ok(Put::Exists) => None,
                Err(e) => panic!("{kind}: round {round}, writer {w}: {e}"),
            })
            .collect();
        assert_eq!(
            written.len(),
            1,
            "{kind}: round {round}: writers {written:?} all wrote {key}"
        );
        let got = read_all(&b, &key)
            .await
            .unwrap_or_else(|e| panic!("{kind}: round {round}: reading {key}: {e}"));
        assert!(
            got == bodies[written[0]],
            "{kind}: round {round}: {key} is not the winner's bytes"
        );
    }
}

/// A PUT with a wrong `x-amz-checksum-crc32c` that moto stores without
/// checking (it takes unsigned requests): the download must catch it.
fn put_with_wrong_checksum(server: &S3Server, key: &str, body: &[u8]) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(server.addr()).expect("connecting to moto");
    let head = format!(
        "PUT /{}/{key} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\
         x-amz-sdk-checksum-algorithm: CRC32C\r\nx-amz-checksum-crc32c: AAAAAA==\r\n\
         Connection: close\r\n\r\n",
        server.bucket,
        server.addr(),
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

#[test]
fn s3s_fs_backend() {
    let server = S3Server::s3s_fs();
    aws_profiles(&server);
    rt().block_on(async {
        round_trips(&server).await;
        listing_and_deleting(&server).await;
        abandoned_uploads(&server).await;
        wrong_places(&server).await;
        // s3s-fs checks signatures (moto takes any).
        wrong_secret(&server).await;
        faults(&server).await;
        replaced_while_read(&server).await;
        // moto checks If-None-Match and stores in two Python steps another
        // thread can come between; S3 and the tests' s3s-fs server do not.
        racing_creates(&server).await;
        // s3s-fs has no ListMultipartUploads: sweeping finds nothing to do.
        let b = open(&server, "sweep/", "").await;
        assert_eq!(b.sweep_temps(0).await.unwrap(), 0);
    });
}

#[test]
fn moto_backend() {
    let Some(server) = S3Server::moto() else {
        return;
    };
    aws_profiles(&server);
    rt().block_on(async {
        round_trips(&server).await;
        listing_and_deleting(&server).await;
        abandoned_uploads(&server).await;
        wrong_places(&server).await;
        faults(&server).await;
        replaced_while_read(&server).await;

        // Whole-object downloads (the log, checkpoints) are checked against
        // the checksum the server returns. Streaming reads fetch ranges,
        // which carry none: archives are proven by their SHA-256 instead.
        put_with_wrong_checksum(&server, "ck/corrupt", b"some bytes");
        let b = open(&server, "ck/", "").await;
        let e = b.get("corrupt").await.unwrap_err();
        assert!(e.to_string().contains("checksum mismatch"), "{e}");

        // A multipart upload a killed writer left (moto takes unsigned
        // requests): swept when old enough, only under the prefix, and
        // only for keys cairn writes (another program's upload is left).
        for key in [
            "sweep/snapshots/left",
            "sweep/not-cairns",
            "elsewhere/snapshots/left",
        ] {
            let (status, resp) = raw_http(
                server.addr(),
                "POST",
                &format!("/{}/{key}?uploads", server.bucket),
                b"",
            )
            .expect("creating a multipart upload by hand");
            assert_eq!(status, 200, "{resp}");
        }
        // moto dates every upload 2010-11-10, so age cannot be tested here.
        let b = open(&server, "sweep/", "").await;
        assert_eq!(b.sweep_temps(3_600_000).await.unwrap(), 1);
        assert_eq!(b.sweep_temps(0).await.unwrap(), 0);
        let elsewhere = open(&server, "elsewhere/", "").await;
        assert_eq!(
            elsewhere.sweep_temps(0).await.unwrap(),
            1,
            "the other prefix's upload was left alone"
        );
    });
}
