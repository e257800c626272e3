//! The S3 server of the end-to-end tests: s3s-fs's file-system store, each
//! change to an object committed whole, as S3 commits a PUT.
//!
//! The s3s-fs 0.14.1 binary is not atomic where two writers meet: a PUT checks
//! `If-None-Match`/`If-Match` and only then writes, and it renames the object's
//! bytes and its checksum record into place as two separate steps. Two PUTs of
//! one key that overlap (a killed `cairn replicate` whose last request the
//! server is still handling, and its restarted successor) both pass the check,
//! and the key can end up naming one PUT's bytes with the other's checksum: a
//! state no S3 store can reach, which cairn then rightly refuses to read. The
//! kill tables need the store's real guarantee, so this binary serves the same
//! s3s-fs store (`s3s_fs::FileSystem`) with the same flags, and
//! - takes the whole body of a request that changes an object (PutObject,
//!   CopyObject, CompleteMultipartUpload, DeleteObject(s)) before acting on it,
//!   so an upload cut short commits nothing and no lock waits on a slow client;
//! - runs those one at a time (a write lock), and the opening of reads
//!   (GetObject, HeadObject, listings) under a read lock, so a reader sees an
//!   object's bytes and checksum from the same PUT.
//!
//! Uploads of parts stream through unlocked: they write only the upload's own
//! part files, which Complete reads under the write lock.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::{Body, HttpError, HttpResponse};
use tokio::sync::RwLock;

/// The s3s-fs binary's flags, so the fixture starts either the same way.
#[derive(Parser)]
#[command(about = "s3s-fs's store with atomic commits, for cairn's end-to-end tests")]
struct Opt {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on.
    #[arg(long)]
    port: u16,
    /// Access key that requests must be signed with (SigV4).
    #[arg(long)]
    access_key: String,
    /// Secret key that requests must be signed with (SigV4).
    #[arg(long)]
    secret_key: String,
    /// Directory whose subdirectories are the buckets.
    root: PathBuf,
}

fn main() -> ExitCode {
    let opt = Opt::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cairn-test-s3: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(opt)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn-test-s3: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(opt: Opt) -> Result<(), String> {
    let store = s3s_fs::FileSystem::new(&opt.root)
        .map_err(|e| format!("cannot serve {}: {e:?}", opt.root.display()))?;
    let mut builder = S3ServiceBuilder::new(store);
    builder.set_auth(SimpleAuth::from_single(opt.access_key, opt.secret_key));
    let s3 = builder.build();
    let gate = Arc::new(RwLock::new(()));

    let addr = format!("{}:{}", opt.host, opt.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    eprintln!(
        "cairn-test-s3: serving {} on http://{addr}",
        opt.root.display()
    );
    let http = ConnBuilder::new(TokioExecutor::new());
    loop {
        let (socket, _peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                eprintln!("cairn-test-s3: accepting a connection: {e}");
                continue;
            }
        };
        let (s3, gate) = (s3.clone(), gate.clone());
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let (s3, gate) = (s3.clone(), gate.clone());
            async move { handle(&s3, &gate, req).await }
        });
        let conn = http
            .serve_connection(TokioIo::new(socket), service)
            .into_owned();
        tokio::spawn(async move {
            // A client that goes away mid-request is the tests' business, not an error here.
            let _ = conn.await;
        });
    }
}

async fn handle(
    s3: &S3Service,
    gate: &RwLock<()>,
    req: Request<Incoming>,
) -> Result<HttpResponse, HttpError> {
    match kind(req.method(), req.uri().query().unwrap_or("")) {
        Kind::Commit => {
            let (parts, body) = req.into_parts();
            let body = match body.collect().await {
                Ok(b) => b.to_bytes(),
                // The client went away mid-upload: nothing to commit.
                Err(e) => return Err(HttpError::new(Box::new(e))),
            };
            let _one_at_a_time = gate.write().await;
            s3.call(Request::from_parts(parts, Body::from(body))).await
        }
        Kind::Read => {
            let _no_commit_meanwhile = gate.read().await;
            s3.call(req.map(Body::from)).await
        }
        Kind::Part => s3.call(req.map(Body::from)).await,
    }
}

#[derive(Debug, PartialEq)]
enum Kind {
    /// Changes what a key names (or a bucket): whole body first, then alone.
    Commit,
    /// Opens an object or lists keys: never beside a commit.
    Read,
    /// Writes or drops a multipart upload's parts, which no key names yet.
    Part,
}

fn kind(method: &Method, query: &str) -> Kind {
    let has = |name: &str| {
        query
            .split('&')
            .any(|kv| kv.split('=').next() == Some(name))
    };
    let upload = has("uploadId") || has("uploads");
    match *method {
        Method::GET | Method::HEAD if !upload => Kind::Read,
        // PutObject and CopyObject (UploadPart and UploadPartCopy carry uploadId).
        Method::PUT if !upload => Kind::Commit,
        // CompleteMultipartUpload and DeleteObjects (CreateMultipartUpload is `?uploads`).
        Method::POST if has("uploadId") || has("delete") => Kind::Commit,
        Method::DELETE if !upload => Kind::Commit,
        _ => Kind::Part,
    }
}

// The server itself is exercised by every S3 test of the e2e suite.
#[test]
fn requests_are_classified_by_what_they_change() {
    assert_eq!(kind(&Method::PUT, ""), Kind::Commit);
    assert_eq!(kind(&Method::PUT, "partNumber=1&uploadId=x"), Kind::Part);
    assert_eq!(kind(&Method::POST, "uploadId=x"), Kind::Commit);
    assert_eq!(kind(&Method::POST, "uploads"), Kind::Part);
    assert_eq!(kind(&Method::POST, "delete"), Kind::Commit);
    assert_eq!(kind(&Method::DELETE, ""), Kind::Commit);
    assert_eq!(kind(&Method::DELETE, "uploadId=x"), Kind::Part);
    assert_eq!(kind(&Method::GET, "list-type=2&prefix=a"), Kind::Read);
    assert_eq!(kind(&Method::GET, "uploadId=x"), Kind::Part);
    assert_eq!(kind(&Method::HEAD, ""), Kind::Read);
}
