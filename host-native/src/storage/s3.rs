//! The S3 backend: any S3-compatible store (AWS, MinIO, R2, B2, Garage, a
//! test server) through aws-sdk-s3 on rustls + ring, with cairn's own
//! retries, conditional writes and streaming multipart uploads.
//!
//! Integrity: every request body carries a CRC32C (`x-amz-checksum-crc32c`,
//! computed by the SDK over the in-memory body and sent as a header, so no
//! aws-chunked encoding), and small whole-object downloads (`get`: the log,
//! checkpoints) are checked against the checksum the server returns.
//! Streaming reads (`read`: archives) fetch ranges, `parts` at a time, held
//! to one version of the object by its ETag (If-Match); S3 sends no checksum
//! for a range, and objects uploaded in parts only have per-part ones, so
//! what proves an archive's bytes is the catalog: its size and SHA-256, or
//! for a restore the SHA-256 of the database it decodes to, which every
//! reader checks (docs/FORMAT.md §7.5).

use std::error::Error as StdError;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Region, StalledStreamProtectionConfig};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream as SdkStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumMode, CompletedMultipartUpload, CompletedPart, Delete,
    ObjectIdentifier,
};
use aws_smithy_http_client::tls;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::task::JoinSet;

use super::retry::{self, Policy};
use super::url::S3Config;
use super::{Backend, Body, ByteStream, Cond, ObjectInfo, Put};

/// S3 allows at most 10,000 parts per upload.
const MAX_PARTS: i32 = 10_000;
/// DeleteObjects takes at most 1,000 keys.
const DELETE_BATCH: usize = 1000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to the first byte of a response when the request has no big body.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// The slowest upload assumed when giving a request with a body time to
/// finish (1 Mbit/s): the SDK's read timeout covers sending the body too, and
/// a stalled in-memory body is only caught by that timeout.
const SLOWEST_UPLOAD_BYTES_PER_SEC: u64 = 128 << 10;
/// A response body that moves no bytes for this long is cut off (the SDK's
/// stalled-stream protection), so a download never hangs silently.
const STALL_GRACE: Duration = Duration::from_secs(30);

pub struct S3 {
    inner: Arc<Inner>,
}

/// What the upload tasks share with the backend.
struct Inner {
    client: Client,
    bucket: String,
    prefix: String,
    endpoint: Option<String>,
    profile: Option<String>,
    part_size: usize,
    parts_in_flight: usize,
    policy: Policy,
    /// Set once the server answered DeleteObjects with NotImplemented.
    single_deletes: AtomicBool,
}

impl S3 {
    /// A client for `c`. Credentials come from the standard AWS chain
    /// (environment, `profile=` or the default profile, SSO, web identity,
    /// container and instance roles); they are resolved here, so a missing
    /// key fails now with a clear message rather than on the first upload.
    pub async fn connect(c: S3Config) -> anyhow::Result<S3> {
        let url = format!("s3://{}/{}", c.bucket, c.prefix);
        if let Some(e) = &c.endpoint {
            let ok = ::url::Url::parse(e)
                .map(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
                .unwrap_or(false);
            if !ok {
                anyhow::bail!(
                    "destination {url}: endpoint={e} is not an http:// or https:// URL (endpoint=https://host[:port])"
                );
            }
        }
        // rustls on ring: the SDK's default client would pull in aws-lc.
        // The same client serves plain-http endpoints (local test servers).
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            // One retry loop, ours: the SDK's would multiply with it and hide
            // the error kinds `retry::is_transient` needs.
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts(READ_TIMEOUT))
            .stalled_stream_protection(
                StalledStreamProtectionConfig::enabled()
                    .grace_period(STALL_GRACE)
                    .build(),
            );
        if let Some(p) = &c.profile {
            loader = loader.profile_name(p);
        }
        if let Some(r) = &c.region {
            loader = loader.region(Region::new(r.clone()));
        }
        let sdk = loader.load().await;

        let Some(creds) = sdk.credentials_provider() else {
            anyhow::bail!("destination {url}: no AWS credentials provider is configured");
        };
        use aws_credential_types::provider::ProvideCredentials;
        if let Err(e) = creds.provide_credentials().await {
            anyhow::bail!(
                "destination {url}: cannot load AWS credentials: {}; {}",
                DisplayErrorContext(&e),
                credentials_hint(c.profile.as_deref())
            );
        }

        let mut b = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(c.path_style);
        if sdk.region().is_none() {
            b = b.region(Region::new("us-east-1"));
        }
        // On the S3 client only: the credentials chain (STS, SSO) keeps AWS's
        // own endpoints.
        if let Some(e) = &c.endpoint {
            b = b.endpoint_url(e.clone());
        }
        Ok(S3 {
            inner: Arc::new(Inner {
                client: Client::from_conf(b.build()),
                bucket: c.bucket,
                prefix: c.prefix,
                endpoint: c.endpoint,
                profile: c.profile,
                part_size: c.part_size.clamp(5, 5 * 1024) << 20,
                parts_in_flight: c.parts_in_flight.max(1),
                policy: Policy::from_env(),
                single_deletes: AtomicBool::new(false),
            }),
        })
    }
}

fn timeouts(read: Duration) -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(read)
        .build()
}

/// The timeouts for a request that sends `len` bytes.
fn upload_timeouts(len: usize) -> TimeoutConfig {
    timeouts(READ_TIMEOUT + Duration::from_secs(len as u64 / SLOWEST_UPLOAD_BYTES_PER_SEC))
}

fn credentials_hint(profile: Option<&str>) -> String {
    match profile {
        Some(p) => format!(
            "check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the profile; profile={p})"
        ),
        None => {
            "check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the profile)".into()
        }
    }
}

fn status_of<E>(e: &SdkError<E>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

fn code_of<E: ProvideErrorMetadata>(e: &SdkError<E>) -> Option<&str> {
    ProvideErrorMetadata::code(e)
}

/// A 404 about the object (not about the bucket).
fn is_absent<E: ProvideErrorMetadata>(e: &SdkError<E>) -> bool {
    let code = code_of(e);
    code != Some("NoSuchBucket")
        && (status_of(e) == Some(404) || matches!(code, Some("NoSuchKey" | "NotFound")))
}

fn is_not_implemented<E: ProvideErrorMetadata>(e: &SdkError<E>) -> bool {
    status_of(e) == Some(501) || code_of(e) == Some("NotImplemented")
}

fn is_precondition_failed<E: ProvideErrorMetadata>(e: &SdkError<E>) -> bool {
    status_of(e) == Some(412) || code_of(e) == Some("PreconditionFailed")
}

fn is_no_such_upload<E: ProvideErrorMetadata>(e: &SdkError<E>) -> bool {
    code_of(e) == Some("NoSuchUpload")
}

/// The error kind for a response status and S3 error code, chosen so that
/// `retry::is_transient` retries exactly what may pass on another try.
fn kind_for(status: Option<u16>, code: Option<&str>) -> io::ErrorKind {
    use io::ErrorKind::*;
    let status = status.unwrap_or(0);
    match code.unwrap_or("") {
        "NoSuchBucket" | "NoSuchKey" | "NoSuchUpload" => return NotFound,
        "InvalidAccessKeyId"
        | "SignatureDoesNotMatch"
        | "AccessDenied"
        | "ExpiredToken"
        | "InvalidToken"
        | "TokenRefreshRequired"
        | "AllAccessDisabled" => {
            return PermissionDenied;
        }
        "NotImplemented" => return Unsupported,
        "SlowDown"
        | "Throttling"
        | "ThrottlingException"
        | "RequestLimitExceeded"
        | "TooManyRequests"
        | "ConditionalRequestConflict"
        | "OperationAborted" => {
            return ResourceBusy;
        }
        "RequestTimeout" => return TimedOut,
        // The body was damaged on the way; it is still intact here, so
        // sending it again is the fix.
        "BadDigest" | "XAmzContentChecksumMismatch" | "IncompleteBody" => {
            return ConnectionAborted;
        }
        "InternalError" | "ServiceUnavailable" => return ConnectionAborted,
        _ => {}
    }
    match status {
        401 | 403 => PermissionDenied,
        404 => NotFound,
        409 | 429 => ResourceBusy,
        412 => AlreadyExists,
        501 => Unsupported,
        500..=599 => ConnectionAborted,
        400..=499 => InvalidInput,
        _ => Other,
    }
}

/// The first error of `kind` in a chain.
fn find_in_chain<'a, T: StdError + 'static>(e: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
}

/// What the first GET of a streaming read found.
enum First {
    /// The server ignored `Range` and sent the whole object.
    Whole(SdkStream),
    /// The first range: its bytes, the object's size and ETag.
    Part {
        data: Bytes,
        total: u64,
        etag: Option<String>,
    },
}

impl Inner {
    fn describe(&self, key: &str) -> String {
        format!("s3://{}/{}{key}", self.bucket, self.prefix)
    }

    fn full_key(&self, key: &str) -> io::Result<String> {
        cairn_core::catalog::validate_object_key(key).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: {e}", self.describe(key)),
            )
        })?;
        Ok(format!("{}{key}", self.prefix))
    }

    /// An SDK error as an `io::Error` whose kind says whether to retry and
    /// whose message names the object, the HTTP status and the S3 code.
    fn fail<E>(&self, op: &str, key: &str, e: SdkError<E>) -> io::Error
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        use io::ErrorKind::*;
        let url = self.describe(key);
        if let Some(c) = find_in_chain::<CredentialsError>(&e) {
            return io::Error::new(
                PermissionDenied,
                format!(
                    "{op} {url}: no usable AWS credentials ({}); {}",
                    DisplayErrorContext(c),
                    credentials_hint(self.profile.as_deref())
                ),
            );
        }
        let status = status_of(&e);
        let code = code_of(&e).map(str::to_owned);
        let server_msg = ProvideErrorMetadata::message(&e).map(str::to_owned);
        let what = match (status, &code, &server_msg) {
            (Some(s), Some(c), Some(m)) => format!("HTTP {s} {c}: {m}"),
            (Some(s), Some(c), None) => format!("HTTP {s} {c}"),
            (Some(s), None, _) => format!("HTTP {s}"),
            (None, _, _) => DisplayErrorContext(&e).to_string(),
        };
        let kind = match &e {
            SdkError::TimeoutError(_) => TimedOut,
            SdkError::DispatchFailure(d) if d.is_timeout() => TimedOut,
            SdkError::DispatchFailure(d) if d.is_io() => {
                // Keep a refused or reset connection as such; any other
                // I/O failure on the wire is worth another try too.
                match find_in_chain::<io::Error>(&e).map(io::Error::kind) {
                    Some(
                        k @ (ConnectionRefused | ConnectionReset | ConnectionAborted | TimedOut
                        | BrokenPipe | UnexpectedEof | NotConnected),
                    ) => k,
                    _ => ConnectionReset,
                }
            }
            SdkError::DispatchFailure(d) if d.is_user() => InvalidInput,
            // TLS, DNS, proxy and stalled-body failures: network trouble.
            SdkError::DispatchFailure(_) => ConnectionAborted,
            SdkError::ConstructionFailure(_) => InvalidInput,
            // An unreadable answer to a request that succeeded: most likely
            // a cut connection.
            SdkError::ResponseError(_) if status.is_some_and(|s| s < 300) => ConnectionAborted,
            _ => kind_for(status, code.as_deref()),
        };
        let msg = match (kind, code.as_deref()) {
            (NotFound, Some("NoSuchBucket")) => format!(
                "{op} {url}: bucket \"{}\" does not exist{} ({what})",
                self.bucket,
                self.endpoint
                    .as_deref()
                    .map(|e| format!(" at {e}"))
                    .unwrap_or_default()
            ),
            (PermissionDenied, _) => format!(
                "{op} {url}: access denied ({what}); {}",
                credentials_hint(self.profile.as_deref())
            ),
            (_, Some("AuthorizationHeaderMalformed" | "PermanentRedirect")) => format!(
                "{op} {url}: {what}; the bucket is in another region: set region= (or endpoint=)"
            ),
            _ if status == Some(301) => format!(
                "{op} {url}: {what}; the bucket is in another region: set region= (or endpoint=)"
            ),
            _ => format!("{op} {url}: {what}"),
        };
        io::Error::new(kind, msg)
    }

    fn abandoned_msg(&self, key: &str, e: &io::Error) -> io::Error {
        io::Error::new(e.kind(), format!("upload {}: {e}", self.describe(key)))
    }

    /// Whether an object is there (HEAD).
    async fn exists(&self, key: &str, full: &str) -> io::Result<Option<u64>> {
        retry::retry(
            self.policy,
            &format!("HEAD {}", self.describe(key)),
            |_| async move {
                match self
                    .client
                    .head_object()
                    .bucket(&self.bucket)
                    .key(full)
                    .send()
                    .await
                {
                    Ok(o) => Ok(Some(o.content_length().unwrap_or(0).max(0) as u64)),
                    Err(e) if is_absent(&e) => Ok(None),
                    Err(e) => Err(self.fail("HEAD", key, e)),
                }
            },
        )
        .await
    }

    async fn get(&self, key: &str) -> io::Result<Option<Bytes>> {
        let full = self.full_key(key)?;
        let full = full.as_str();
        retry::retry(
            self.policy,
            &format!("GET {}", self.describe(key)),
            |_| async move {
                let out = match self
                    .client
                    .get_object()
                    .bucket(&self.bucket)
                    .key(full)
                    .checksum_mode(ChecksumMode::Enabled)
                    .send()
                    .await
                {
                    Ok(o) => o,
                    Err(e) if is_absent(&e) => return Ok(None),
                    Err(e) => return Err(self.fail("GET", key, e)),
                };
                let cap = out.content_length().unwrap_or(0).clamp(0, 64 << 20) as usize;
                let mut body = out.body;
                let mut buf = BytesMut::with_capacity(cap);
                while let Some(piece) = body.next().await {
                    buf.extend_from_slice(&piece.map_err(|e| self.body_error(key, e))?);
                }
                Ok(Some(buf.freeze()))
            },
        )
        .await
    }

    /// The first GET of a streaming read: the object's first `len` bytes,
    /// its size and ETag, or the whole body when the server ignores `Range`.
    async fn first_range(&self, key: &str, len: u64) -> io::Result<First> {
        let full = self.full_key(key)?;
        let full = full.as_str();
        retry::retry(
            self.policy,
            &format!("GET {}", self.describe(key)),
            |_| async move {
                let out = match self
                    .client
                    .get_object()
                    .bucket(&self.bucket)
                    .key(full)
                    .range(format!("bytes=0-{}", len - 1))
                    .send()
                    .await
                {
                    Ok(o) => o,
                    // 416: no byte 0, the object is empty.
                    Err(e) if status_of(&e) == Some(416) => {
                        return Ok(First::Part {
                            data: Bytes::new(),
                            total: 0,
                            etag: None,
                        });
                    }
                    Err(e) => return Err(self.fail("GET", key, e)),
                };
                let Some(range) = out.content_range() else {
                    return Ok(First::Whole(out.body));
                };
                let total = range
                    .rsplit_once('/')
                    .and_then(|(_, t)| t.parse::<u64>().ok())
                    .ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "GET {}: the server sent Content-Range \"{range}\" without the object's size",
                                self.describe(key)
                            ),
                        )
                    })?;
                let etag = out.e_tag().map(str::to_owned);
                let data = self.collect(key, out.body, 0, len.min(total)).await?;
                Ok(First::Part { data, total, etag })
            },
        )
        .await
    }

    /// Bytes `start..start + len` of `key`, whole in memory. With `etag`
    /// (If-Match), an object replaced since the first GET is an error, not
    /// a silent mix of two objects.
    async fn get_range(
        &self,
        key: &str,
        start: u64,
        len: u64,
        etag: Option<&str>,
    ) -> io::Result<Bytes> {
        let full = self.full_key(key)?;
        let full = full.as_str();
        retry::retry(
            self.policy,
            &format!("GET {} at {start}", self.describe(key)),
            |_| async move {
                let out = self
                    .client
                    .get_object()
                    .bucket(&self.bucket)
                    .key(full)
                    .range(format!("bytes={start}-{}", start + len - 1))
                    .set_if_match(etag.map(str::to_owned))
                    .send()
                    .await
                    .map_err(|e| {
                        if is_precondition_failed(&e) {
                            self.replaced(key)
                        } else {
                            self.fail("GET", key, e)
                        }
                    })?;
                // Servers that ignore If-Match still say which version they sent.
                if let (Some(want), Some(got)) = (etag, out.e_tag())
                    && want != got
                {
                    return Err(self.replaced(key));
                }
                self.collect(key, out.body, start, len).await
            },
        )
        .await
    }

    fn replaced(&self, key: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} was replaced while it was being read; run the command again",
                self.describe(key)
            ),
        )
    }

    /// A ranged response body, which must hold exactly `len` bytes: a short
    /// one (a cut connection, a server that ignored the range) is retried.
    async fn collect(
        &self,
        key: &str,
        mut body: SdkStream,
        start: u64,
        len: u64,
    ) -> io::Result<Bytes> {
        let mut buf = BytesMut::with_capacity(len as usize);
        while let Some(piece) = body.next().await {
            buf.extend_from_slice(&piece.map_err(|e| self.body_error(key, e))?);
            if buf.len() as u64 > len {
                break;
            }
        }
        if buf.len() as u64 != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "reading {}: the server sent {} bytes at offset {start}, not the {len} asked for",
                    self.describe(key),
                    buf.len()
                ),
            ));
        }
        Ok(buf.freeze())
    }

    /// A whole-object response body as a stream.
    fn body_stream(self: &Arc<Self>, key: &str, body: SdkStream) -> ByteStream {
        let me = self.clone();
        let key = key.to_string();
        futures::stream::unfold(Some(body), move |body| {
            let (me, key) = (me.clone(), key.clone());
            async move {
                let mut body = body?;
                match body.next().await? {
                    Ok(b) => Some((Ok(b), Some(body))),
                    Err(e) => Some((Err(me.body_error(&key, e)), None)),
                }
            }
        })
        .boxed()
    }

    /// An error while a response body streams in.
    fn body_error(&self, key: &str, e: aws_sdk_s3::primitives::ByteStreamError) -> io::Error {
        let text = DisplayErrorContext(&e).to_string();
        let kind = if text.contains("checksum mismatch") {
            // The bytes changed on the way or on the server: another read
            // may be clean, so it stays retryable.
            io::ErrorKind::ConnectionAborted
        } else {
            match find_in_chain::<io::Error>(&e).map(io::Error::kind) {
                Some(k) if k != io::ErrorKind::Other => k,
                _ => io::ErrorKind::ConnectionReset,
            }
        };
        io::Error::new(kind, format!("reading {}: {text}", self.describe(key)))
    }

    /// One PutObject; `Exists` when create-only found an object.
    async fn put(&self, key: &str, data: Bytes, cond: &Cond, op: &str) -> io::Result<Put> {
        let full = self.full_key(key)?;
        let full = full.as_str();
        let create_only = *cond == Cond::CreateOnly;
        let put = retry::retry(self.policy, &format!("PUT {}", self.describe(key)), |n| {
            let data = data.clone();
            async move {
                let len = data.len();
                let req = self
                    .client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(full)
                    .content_length(len as i64)
                    .checksum_algorithm(ChecksumAlgorithm::Crc32C)
                    .body(SdkStream::from(data))
                    .set_if_none_match(create_only.then(|| "*".to_string()));
                match req
                    .customize()
                    .config_override(
                        aws_sdk_s3::config::Builder::new().timeout_config(upload_timeouts(len)),
                    )
                    .send()
                    .await
                {
                    Ok(_) => Ok((Put::Written, n)),
                    Err(e) if create_only && is_precondition_failed(&e) => Ok((Put::Exists, n)),
                    Err(e) => Err(self.fail(op, key, e)),
                }
            }
        })
        .await?;
        match put {
            // An earlier try may have landed with its answer lost, and then
            // the 412 is about our own object: a commit would count it as
            // someone else's. Reading it back tells (puts are small).
            (Put::Exists, n) if n > 0 => match self.get(key).await? {
                Some(there) if there == data => Ok(Put::Written),
                _ => Ok(Put::Exists),
            },
            (p, _) => Ok(p),
        }
    }

    async fn abort(&self, key: &str, full: &str, upload_id: &str) -> io::Result<()> {
        self.abort_was_there(key, full, upload_id).await.map(|_| ())
    }

    /// Like `abort`, but says whether the upload was still there.
    async fn abort_was_there(&self, key: &str, full: &str, upload_id: &str) -> io::Result<bool> {
        retry::retry(
            self.policy,
            &format!("abort upload of {}", self.describe(key)),
            |_| async move {
                match self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(full)
                    .upload_id(upload_id)
                    .send()
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(e) if is_no_such_upload(&e) || status_of(&e) == Some(404) => Ok(false),
                    Err(e) => Err(self.fail("abort upload of", key, e)),
                }
            },
        )
        .await
    }

    /// One part, retried on its own: a failure resends this part only.
    async fn upload_part(
        self: Arc<Self>,
        key: String,
        full: String,
        upload_id: String,
        number: i32,
        data: Bytes,
    ) -> io::Result<CompletedPart> {
        let what = format!("part {number} of {}", self.describe(&key));
        let this = &self;
        let (full, upload_id, key) = (full.as_str(), upload_id.as_str(), key.as_str());
        retry::retry(self.policy, &what, |_| {
            let data = data.clone();
            async move {
                let len = data.len();
                let out = this
                    .client
                    .upload_part()
                    .bucket(&this.bucket)
                    .key(full)
                    .upload_id(upload_id)
                    .part_number(number)
                    .content_length(len as i64)
                    .checksum_algorithm(ChecksumAlgorithm::Crc32C)
                    .body(SdkStream::from(data))
                    .customize()
                    .config_override(
                        aws_sdk_s3::config::Builder::new().timeout_config(upload_timeouts(len)),
                    )
                    .send()
                    .await
                    .map_err(|e| this.fail(&format!("upload part {number} of"), key, e))?;
                let Some(etag) = out.e_tag() else {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "upload part {number} of {}: the server returned no ETag",
                            this.describe(key)
                        ),
                    ));
                };
                Ok(CompletedPart::builder()
                    .part_number(number)
                    .e_tag(etag)
                    .set_checksum_crc32_c(out.checksum_crc32_c().map(str::to_owned))
                    .build())
            }
        })
        .await
    }

    /// The multipart path of `upload`: `first` is already read and more
    /// follows in `parts`.
    async fn multipart(
        self: &Arc<Self>,
        key: &str,
        first: Bytes,
        parts: &mut Parts,
        cond: &Cond,
    ) -> io::Result<Put> {
        let full = self.full_key(key)?;
        let create_only = *cond == Cond::CreateOnly;
        let created = {
            let full = full.as_str();
            retry::retry(
                self.policy,
                &format!("start upload of {}", self.describe(key)),
                |_| async move {
                    self.client
                        .create_multipart_upload()
                        .bucket(&self.bucket)
                        .key(full)
                        .checksum_algorithm(ChecksumAlgorithm::Crc32C)
                        .send()
                        .await
                        .map_err(|e| self.fail("start upload of", key, e))
                },
            )
            .await?
        };
        let Some(upload_id) = created.upload_id().map(str::to_owned) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "start upload of {}: the server returned no upload id",
                    self.describe(key)
                ),
            ));
        };
        let mut guard = AbortOnDrop {
            inner: Some(self.clone()),
            key: key.to_string(),
            full: full.clone(),
            upload_id: upload_id.clone(),
        };
        let sent = self.send_parts(key, &full, &upload_id, first, parts).await;
        let (done, total) = match sent {
            Ok(v) => v,
            Err(e) => {
                guard.disarm();
                return Err(self.abort_after(key, &full, &upload_id, e).await);
            }
        };

        // Stores that ignore If-None-Match on completion would replace the
        // object; a HEAD first keeps create-only on them too (not atomic,
        // the condition below is).
        if create_only {
            match self.exists(key, &full).await {
                Ok(None) => {}
                Ok(Some(_)) => {
                    guard.disarm();
                    self.abort(key, &full, &upload_id).await?;
                    return Ok(Put::Exists);
                }
                Err(e) => {
                    guard.disarm();
                    return Err(self.abort_after(key, &full, &upload_id, e).await);
                }
            }
        }

        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(done))
            .build();
        let outcome = {
            let (full, upload_id, completed) = (full.as_str(), upload_id.as_str(), &completed);
            retry::retry(
                self.policy,
                &format!("complete upload of {}", self.describe(key)),
                |n| async move {
                    match self
                        .client
                        .complete_multipart_upload()
                        .bucket(&self.bucket)
                        .key(full)
                        .upload_id(upload_id)
                        .multipart_upload(completed.clone())
                        .set_if_none_match(create_only.then(|| "*".to_string()))
                        .send()
                        .await
                    {
                        Ok(_) => Ok(Completion::Done),
                        Err(e) if create_only && n == 0 && is_precondition_failed(&e) => {
                            Ok(Completion::Exists)
                        }
                        Err(e) => {
                            let conflict = create_only && is_precondition_failed(&e);
                            let err = self.fail("complete upload of", key, e);
                            // After a try whose answer was lost the upload may
                            // be complete already, and the retry then fails:
                            // 412 (create-only), NoSuchUpload, or 403 on
                            // s3s-fs. Looked into below rather than failed.
                            if n > 0 && !retry::is_transient(&err) {
                                Ok(Completion::Unsure { err, conflict })
                            } else {
                                Err(err)
                            }
                        }
                    }
                },
            )
            .await
        };
        guard.disarm();
        match outcome {
            Ok(Completion::Done) => Ok(Put::Written),
            Ok(Completion::Exists) => {
                self.abort(key, &full, &upload_id).await?;
                Ok(Put::Exists)
            }
            Ok(Completion::Unsure { err, conflict }) => match self.exists(key, &full).await {
                // An object of our size where (for create-only) there was
                // none just before: the lost try published it. The upload
                // is gone then; aborting is only in case it is not.
                Ok(Some(size)) if size == total => {
                    let _ = self.abort(key, &full, &upload_id).await;
                    Ok(Put::Written)
                }
                Ok(Some(_)) if conflict => {
                    self.abort(key, &full, &upload_id).await?;
                    Ok(Put::Exists)
                }
                Ok(_) => Err(self.abort_after(key, &full, &upload_id, err).await),
                Err(e) => Err(self.abort_after(key, &full, &upload_id, e).await),
            },
            Err(e) => Err(self.abort_after(key, &full, &upload_id, e).await),
        }
    }

    /// Aborts after `e`, and returns `e` (noting an abort that failed too).
    async fn abort_after(&self, key: &str, full: &str, upload_id: &str, e: io::Error) -> io::Error {
        match self.abort(key, full, upload_id).await {
            Ok(()) => e,
            Err(a) => io::Error::new(
                e.kind(),
                format!(
                    "{e} (and aborting the multipart upload failed: {a}; a later run removes it)"
                ),
            ),
        }
    }

    /// Reads the body into parts and uploads them, `parts_in_flight` at a
    /// time; memory stays under (parts_in_flight + 1) parts. Returns the
    /// completed parts in order and the total size.
    async fn send_parts(
        self: &Arc<Self>,
        key: &str,
        full: &str,
        upload_id: &str,
        first: Bytes,
        parts: &mut Parts,
    ) -> io::Result<(Vec<CompletedPart>, u64)> {
        let mut tasks: JoinSet<io::Result<CompletedPart>> = JoinSet::new();
        let mut done = Vec::new();
        let mut number: i32 = 0;
        let mut total: u64 = 0;
        let mut next = Some(first);
        let joined = |r: Result<io::Result<CompletedPart>, tokio::task::JoinError>| {
            r.map_err(|e| io::Error::other(format!("a part upload task failed: {e}")))?
        };
        loop {
            // Fail early: a part that failed for good ends the upload.
            while let Some(r) = tasks.try_join_next() {
                done.push(joined(r)?);
            }
            let part = match next.take() {
                Some(p) => p,
                None => match parts
                    .next()
                    .await
                    .map_err(|e| self.abandoned_msg(key, &e))?
                {
                    Some(p) => p,
                    None => break,
                },
            };
            if number == MAX_PARTS {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "upload {}: more than {MAX_PARTS} parts of {} MiB; set a larger part_size= in the destination URL",
                        self.describe(key),
                        self.part_size >> 20
                    ),
                ));
            }
            number += 1;
            total += part.len() as u64;
            while tasks.len() >= self.parts_in_flight {
                match tasks.join_next().await {
                    Some(r) => done.push(joined(r)?),
                    None => break,
                }
            }
            tasks.spawn(self.clone().upload_part(
                key.to_string(),
                full.to_string(),
                upload_id.to_string(),
                number,
                part,
            ));
        }
        while let Some(r) = tasks.join_next().await {
            done.push(joined(r)?);
        }
        done.sort_by_key(|p| p.part_number());
        Ok((done, total))
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>) -> io::Result<Vec<ObjectInfo>> {
        if !prefix.is_empty() {
            self.full_key(prefix.trim_end_matches('/'))?;
            if !prefix.ends_with('/') {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("list {}: a prefix ends in /", self.describe(prefix)),
                ));
            }
        }
        let full_prefix = format!("{}{prefix}", self.prefix);
        let start = start_after.map(|s| format!("{}{s}", self.prefix));
        let what = format!("list {}", self.describe(prefix));
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let (full_prefix, start, tok) = (&full_prefix, &start, &token);
            let page = retry::retry(self.policy, &what, |_| async move {
                self.client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(full_prefix)
                    .delimiter("/")
                    .set_start_after(start.clone())
                    .set_continuation_token(tok.clone())
                    .send()
                    .await
                    .map_err(|e| self.fail("list", prefix, e))
            })
            .await?;
            for o in page.contents() {
                let Some(k) = o.key() else { continue };
                let Some(name) = k.strip_prefix(full_prefix.as_str()) else {
                    continue;
                };
                // Direct children only; dot names are other tools' temps.
                if name.is_empty() || name.contains('/') || name.starts_with('.') {
                    continue;
                }
                if start.as_deref().is_some_and(|s| k <= s) {
                    continue;
                }
                out.push(ObjectInfo {
                    key: format!("{prefix}{name}"),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    modified_ms: o.last_modified().and_then(|t| t.to_millis().ok()),
                });
            }
            match (page.is_truncated(), page.next_continuation_token()) {
                (Some(true), Some(t)) if token.as_deref() != Some(t) => token = Some(t.to_string()),
                (Some(true), _) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{what}: the server said the listing goes on but gave no new continuation token"
                        ),
                    ));
                }
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out.dedup_by(|a, b| a.key == b.key);
        Ok(out)
    }

    async fn delete_one(&self, key: &str) -> io::Result<()> {
        let full = self.full_key(key)?;
        let full = full.as_str();
        retry::retry(
            self.policy,
            &format!("delete {}", self.describe(key)),
            |_| async move {
                match self
                    .client
                    .delete_object()
                    .bucket(&self.bucket)
                    .key(full)
                    .send()
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(e) if is_absent(&e) => Ok(()),
                    Err(e) => Err(self.fail("delete", key, e)),
                }
            },
        )
        .await
    }

    /// One DeleteObjects request; `Ok(false)` if the server lacks it.
    async fn delete_batch(&self, keys: &[String]) -> io::Result<bool> {
        let mut ids = Vec::with_capacity(keys.len());
        for k in keys {
            let id = ObjectIdentifier::builder()
                .key(self.full_key(k)?)
                .build()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
            ids.push(id);
        }
        let delete = Delete::builder()
            .set_objects(Some(ids))
            .quiet(true)
            .build()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let first = keys.first().map(String::as_str).unwrap_or("");
        let what = format!("delete {} objects from {}", keys.len(), self.describe(""));
        let delete = &delete;
        let out = retry::retry(self.policy, &what, |_| async move {
            match self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete.clone())
                .send()
                .await
            {
                Ok(o) => Ok(Some(o)),
                // Servers without DeleteObjects, or old ones that want a
                // Content-MD5 the SDK does not send (it sends a CRC32).
                Err(e) if is_not_implemented(&e) || code_of(&e) == Some("MissingContentMD5") => {
                    Ok(None)
                }
                Err(e) => Err(self.fail("delete", first, e)),
            }
        })
        .await?;
        let Some(out) = out else { return Ok(false) };
        let failed: Vec<_> = out
            .errors()
            .iter()
            .filter(|e| e.code() != Some("NoSuchKey"))
            .collect();
        if let Some(e) = failed.first() {
            let key = e
                .key()
                .map(|k| k.strip_prefix(self.prefix.as_str()).unwrap_or(k))
                .unwrap_or("?");
            let code = e.code().unwrap_or("error");
            return Err(io::Error::new(
                kind_for(None, Some(code)),
                format!(
                    "delete {}: {code}: {}{}",
                    self.describe(key),
                    e.message().unwrap_or(""),
                    if failed.len() > 1 {
                        format!(
                            " (and {} more objects could not be deleted)",
                            failed.len() - 1
                        )
                    } else {
                        String::new()
                    }
                ),
            ));
        }
        Ok(true)
    }

    async fn delete(&self, keys: &[String]) -> io::Result<()> {
        for batch in keys.chunks(DELETE_BATCH) {
            if !self.single_deletes.load(Ordering::Relaxed) {
                if self.delete_batch(batch).await? {
                    continue;
                }
                self.single_deletes.store(true, Ordering::Relaxed);
            }
            // Owned keys: a closure over borrowed ones trips the Send check
            // of the async trait method (a higher-ranked lifetime).
            let mut results = futures::stream::iter(batch.to_vec())
                .map(|k| async move { self.delete_one(&k).await })
                .buffer_unordered(self.parts_in_flight.max(4));
            while let Some(r) = results.next().await {
                r?;
            }
        }
        Ok(())
    }

    async fn sweep_temps(&self, older_than_ms: i64) -> io::Result<usize> {
        let cutoff = super::now_ms().saturating_sub(older_than_ms);
        let what = format!("list the unfinished uploads under {}", self.describe(""));
        let mut removed = 0;
        let mut markers: (Option<String>, Option<String>) = (None, None);
        loop {
            let m = &markers;
            let page = retry::retry(self.policy, &what, |_| async move {
                match self
                    .client
                    .list_multipart_uploads()
                    .bucket(&self.bucket)
                    .prefix(&self.prefix)
                    .set_key_marker(m.0.clone())
                    .set_upload_id_marker(m.1.clone())
                    .send()
                    .await
                {
                    Ok(p) => Ok(Some(p)),
                    // s3s-fs and some small stores lack the call; they then
                    // keep no parts of unfinished uploads worth sweeping.
                    Err(e) if is_not_implemented(&e) => Ok(None),
                    Err(e) => Err(self.fail("list the unfinished uploads under", "", e)),
                }
            })
            .await?;
            let Some(page) = page else { return Ok(removed) };
            for u in page.uploads() {
                let (Some(full), Some(id)) = (u.key(), u.upload_id()) else {
                    continue;
                };
                let started = u.initiated().and_then(|t| t.to_millis().ok());
                let key = full.strip_prefix(self.prefix.as_str()).unwrap_or(full);
                // With a destination at the bucket's root, the listing holds
                // other programs' uploads too: abort only cairn's own.
                if started.is_some_and(|t| t < cutoff)
                    && super::is_layout_key(key)
                    && self.abort_was_there(key, full, id).await?
                {
                    removed += 1;
                }
            }
            let next = (
                page.next_key_marker().map(str::to_owned),
                page.next_upload_id_marker().map(str::to_owned),
            );
            if page.is_truncated() != Some(true) || next.0.is_none() || next == markers {
                break;
            }
            markers = next;
        }
        Ok(removed)
    }
}

enum Completion {
    Done,
    /// 412 on the first try: another object is there.
    Exists,
    /// A retry failed for good; the try before may have completed the
    /// upload with its answer lost (`conflict`: the failure was a 412).
    Unsure {
        err: io::Error,
        conflict: bool,
    },
}

/// Aborts the multipart upload if the upload future is dropped half-way
/// (a cancelled task); the normal paths abort or complete and disarm it.
struct AbortOnDrop {
    inner: Option<Arc<Inner>>,
    key: String,
    full: String,
    upload_id: String,
}

impl AbortOnDrop {
    fn disarm(&mut self) {
        self.inner = None;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return; // no runtime left: `sweep_temps` removes it later
        };
        let (key, full, id) = (
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.full),
            std::mem::take(&mut self.upload_id),
        );
        rt.spawn(async move {
            let _ = inner.abort(&key, &full, &id).await;
        });
    }
}

/// Cuts a body into parts of `size` bytes (the last may be shorter),
/// holding at most one part plus one incoming chunk.
struct Parts {
    body: Body,
    size: usize,
    held: Option<Bytes>,
    ended: bool,
}

impl Parts {
    fn new(body: Body, size: usize) -> Parts {
        Parts {
            body,
            size: size.max(1),
            held: None,
            ended: false,
        }
    }

    async fn chunk(&mut self) -> io::Result<Option<Bytes>> {
        if let Some(c) = self.held.take() {
            return Ok(Some(c));
        }
        while !self.ended {
            match self.body.next().await? {
                Some(c) if c.is_empty() => continue,
                Some(c) => return Ok(Some(c)),
                None => self.ended = true,
            }
        }
        Ok(None)
    }

    /// The next part; `None` after the end; an error if the body was abandoned.
    async fn next(&mut self) -> io::Result<Option<Bytes>> {
        let mut buf: Option<BytesMut> = None;
        loop {
            let have = buf.as_ref().map_or(0, BytesMut::len);
            if have >= self.size {
                break;
            }
            let Some(mut c) = self.chunk().await? else {
                break;
            };
            let room = self.size - have;
            if c.len() > room {
                self.held = Some(c.split_off(room));
            }
            match &mut buf {
                // A chunk that fills a part alone goes out without a copy.
                None if c.len() == self.size => return Ok(Some(c)),
                None => {
                    let mut b = BytesMut::with_capacity(self.size);
                    b.extend_from_slice(&c);
                    buf = Some(b);
                }
                Some(b) => b.extend_from_slice(&c),
            }
        }
        Ok(buf.map(BytesMut::freeze))
    }

    /// Whether the body ended with nothing after what was read.
    async fn at_end(&mut self) -> io::Result<bool> {
        if self.held.is_none() {
            self.held = self.chunk().await?;
        }
        Ok(self.held.is_none())
    }
}

#[async_trait]
impl Backend for S3 {
    fn describe(&self, key: &str) -> String {
        self.inner.describe(key)
    }

    fn scheme(&self) -> &'static str {
        "s3"
    }

    async fn get(&self, key: &str) -> io::Result<Option<Bytes>> {
        self.inner.get(key).await
    }

    async fn read(&self, key: &str) -> io::Result<ByteStream> {
        let inner = self.inner.clone();
        let part = inner.part_size as u64;
        let (data, total, etag) = match inner.first_range(key, part).await? {
            First::Whole(body) => return Ok(inner.body_stream(key, body)),
            First::Part { data, total, etag } => (data, total, etag),
        };
        let got = data.len() as u64;
        let head = futures::stream::iter((!data.is_empty()).then_some(Ok(data)));
        if got >= total {
            return Ok(head.boxed());
        }
        // The rest in ranges, `parts_in_flight` at a time, handed on in
        // order. Each range is its own task, so downloads go on while the
        // reader is busy; the pump stops when the reader goes away (the send
        // fails) or at the first error. Memory stays at about
        // (parts in flight + 2) ranges whatever the object's size.
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(1);
        let key = key.to_string();
        let in_flight = inner.parts_in_flight;
        tokio::spawn(async move {
            let mut ranges = (got..total)
                .step_by(part as usize)
                .map(move |s| (s, part.min(total - s)));
            let mut pending = std::collections::VecDeque::new();
            loop {
                while pending.len() < in_flight {
                    let Some((start, len)) = ranges.next() else {
                        break;
                    };
                    let (inner, key, etag) = (inner.clone(), key.clone(), etag.clone());
                    pending.push_back(tokio::spawn(async move {
                        inner.get_range(&key, start, len, etag.as_deref()).await
                    }));
                }
                let Some(task) = pending.pop_front() else {
                    break;
                };
                let piece = task.await.unwrap_or_else(|e| {
                    Err(io::Error::other(format!("a download task failed: {e}")))
                });
                let failed = piece.is_err();
                if tx.send(piece).await.is_err() || failed {
                    for t in pending {
                        t.abort();
                    }
                    break;
                }
            }
        });
        let rest = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|piece| (piece, rx))
        });
        Ok(head.chain(rest).boxed())
    }

    async fn put(&self, key: &str, data: Bytes, cond: Cond) -> io::Result<Put> {
        self.inner.put(key, data, &cond, "PUT").await
    }

    async fn upload(&self, key: &str, body: Body, cond: Cond) -> io::Result<Put> {
        self.inner.full_key(key)?;
        let mut parts = Parts::new(body, self.inner.part_size);
        let first = parts
            .next()
            .await
            .map_err(|e| self.inner.abandoned_msg(key, &e))?
            .unwrap_or_default();
        if parts
            .at_end()
            .await
            .map_err(|e| self.inner.abandoned_msg(key, &e))?
        {
            return self.inner.put(key, first, &cond, "upload").await;
        }
        self.inner.multipart(key, first, &mut parts, &cond).await
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>) -> io::Result<Vec<ObjectInfo>> {
        self.inner.list(prefix, start_after).await
    }

    async fn delete(&self, keys: &[String]) -> io::Result<()> {
        self.inner.delete(keys).await
    }

    async fn sweep_temps(&self, older_than_ms: i64) -> io::Result<usize> {
        self.inner.sweep_temps(older_than_ms).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Chunk;
    use tokio::sync::mpsc;

    fn body(chunks: &[usize], end: bool) -> Body {
        let (tx, rx) = mpsc::channel(chunks.len() + 1);
        let mut n = 0u8;
        for &c in chunks {
            let data: Vec<u8> = (0..c)
                .map(|_| {
                    n = n.wrapping_add(1);
                    n
                })
                .collect();
            tx.try_send(Chunk::Data(Bytes::from(data))).unwrap();
        }
        if end {
            tx.try_send(Chunk::End).unwrap();
        }
        Body::new(rx)
    }

    async fn split(chunks: &[usize], size: usize) -> (Vec<usize>, bool) {
        let mut p = Parts::new(body(chunks, true), size);
        let first = p.next().await.unwrap().unwrap_or_default();
        let single = p.at_end().await.unwrap();
        let mut lens = vec![first.len()];
        let mut all = first.to_vec();
        while let Some(part) = p.next().await.unwrap() {
            lens.push(part.len());
            all.extend_from_slice(&part);
        }
        let total: usize = chunks.iter().sum();
        let want: Vec<u8> = (1..=total).map(|i| (i % 256) as u8).collect();
        assert_eq!(all, want, "bytes survive the split in order");
        (lens, single)
    }

    #[tokio::test]
    async fn cuts_bodies_into_parts_of_the_size() {
        assert_eq!(split(&[], 10).await, (vec![0], true));
        assert_eq!(split(&[3, 4], 10).await, (vec![7], true));
        assert_eq!(split(&[10], 10).await, (vec![10], true));
        assert_eq!(split(&[4, 0, 6], 10).await, (vec![10], true));
        assert_eq!(split(&[25], 10).await, (vec![10, 10, 5], false));
        assert_eq!(split(&[7, 7, 7], 10).await, (vec![10, 10, 1], false));
        assert_eq!(split(&[10, 10], 10).await, (vec![10, 10], false));
    }

    #[tokio::test]
    async fn an_abandoned_body_is_an_error_not_an_end() {
        let mut p = Parts::new(body(&[4], false), 10);
        let e = p.next().await.unwrap_err();
        assert!(e.to_string().contains("abandoned"), "{e}");
        assert!(!retry::is_transient(&e));
        let mut p = Parts::new(body(&[10], false), 10);
        assert_eq!(p.next().await.unwrap().unwrap().len(), 10);
        assert!(p.at_end().await.is_err());
    }

    #[test]
    fn statuses_map_to_retryable_kinds_or_not() {
        use io::ErrorKind::*;
        let transient = |s: Option<u16>, c: Option<&str>| {
            retry::is_transient(&io::Error::new(kind_for(s, c), "x"))
        };
        for (s, c) in [
            (Some(500), Some("InternalError")),
            (Some(503), Some("SlowDown")),
            (Some(502), None),
            (Some(429), None),
            (Some(409), Some("ConditionalRequestConflict")),
            (Some(400), Some("RequestTimeout")),
            (Some(400), Some("BadDigest")),
        ] {
            assert!(transient(s, c), "{s:?} {c:?}");
        }
        for (s, c) in [
            (Some(403), Some("InvalidAccessKeyId")),
            (Some(403), Some("SignatureDoesNotMatch")),
            (Some(404), Some("NoSuchBucket")),
            (Some(404), Some("NoSuchKey")),
            (Some(501), Some("NotImplemented")),
            (Some(400), Some("InvalidArgument")),
        ] {
            assert!(!transient(s, c), "{s:?} {c:?}");
        }
        assert_eq!(
            kind_for(Some(403), Some("SignatureDoesNotMatch")),
            PermissionDenied
        );
        assert_eq!(kind_for(Some(404), Some("NoSuchBucket")), NotFound);
        assert_eq!(kind_for(Some(404), None), NotFound);
        assert_eq!(
            kind_for(Some(412), Some("PreconditionFailed")),
            AlreadyExists
        );
    }

    #[test]
    fn upload_timeouts_grow_with_the_body() {
        let small = upload_timeouts(1 << 10).read_timeout().unwrap();
        let big = upload_timeouts(512 << 20).read_timeout().unwrap();
        assert_eq!(small, READ_TIMEOUT);
        assert_eq!(big, READ_TIMEOUT + Duration::from_secs(4096));
    }
}
