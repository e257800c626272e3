//! Streaming, parallel encode and decode. A reader thread cuts the input,
//! worker threads (one per core) compress/encrypt or decrypt/inflate chunks,
//! and the calling thread writes results in order. Queues are bounded, so
//! memory stays at a few chunks per worker whatever the database size.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow};
use cairn_core::chunk::Trailer;
use cairn_core::{ArchiveReader, Event, FrameParser, KeyMaterial, RawChunk, Tally};
use sha2::{Digest, Sha256};

use crate::engine::ChunkEncoder;
use crate::progress::Progress;

pub fn workers() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 16)
}

/// What was written: the trailer (plain length and digest) and the stored bytes.
pub struct Encoded {
    pub trailer: Trailer,
    pub stored_len: u64,
    pub stored_sha256: [u8; 32],
}

/// Counts and hashes what goes through it.
pub struct HashingWriter<W> {
    inner: W,
    pub len: u64,
    pub hasher: Sha256,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            len: 0,
            hasher: Sha256::new(),
        }
    }
    pub fn finish(self) -> (W, u64, [u8; 32]) {
        (self.inner, self.len, self.hasher.finalize().into())
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Reads up to `buf.len()` bytes, fewer only at end of input.
pub fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

type Job = (u64, Vec<u8>);

fn shared<T>(rx: Receiver<T>) -> Arc<Mutex<Receiver<T>>> {
    Arc::new(Mutex::new(rx))
}

fn next_job<T>(rx: &Mutex<Receiver<T>>) -> Option<T> {
    rx.lock().ok()?.recv().ok()
}

/// Encodes `input` into `out` with one encoder per worker plus one for the
/// preamble and finale. `input_name` is used in read errors.
pub fn encode(
    archive_id: [u8; 16],
    mut input: impl Read + Send,
    input_name: &str,
    chunk_size: usize,
    mut encoders: Vec<Box<dyn ChunkEncoder>>,
    out: impl Write,
    progress: &Progress,
) -> Result<Encoded> {
    let mut head = encoders.pop().ok_or_else(|| anyhow!("no encoder"))?;
    let mut out = HashingWriter::new(out);
    out.write_all(&head.preamble()?)?;
    let n = encoders.len();
    let (job_tx, job_rx) = sync_channel::<Job>(n * 2);
    let (res_tx, res_rx) = sync_channel::<(u64, Result<Vec<u8>>)>(n * 4);
    let job_rx = shared(job_rx);

    let tally = std::thread::scope(|s| -> Result<Tally> {
        let reader = s.spawn(move || -> Result<Tally> {
            let mut tally = Tally::default();
            loop {
                let mut buf = vec![0u8; chunk_size];
                let got = read_full(&mut input, &mut buf)
                    .with_context(|| format!("reading {input_name}"))?;
                if got == 0 {
                    return Ok(tally);
                }
                buf.truncate(got);
                tally.add(&buf);
                if job_tx.send((tally.chunks() - 1, buf)).is_err() {
                    return Ok(tally); // the writer stopped on an error of its own
                }
            }
        });
        for mut enc in encoders {
            let rx = job_rx.clone();
            let tx: SyncSender<_> = res_tx.clone();
            s.spawn(move || {
                while let Some((i, data)) = next_job(&rx) {
                    if tx.send((i, enc.encode_chunk(i, &data))).is_err() {
                        break;
                    }
                }
            });
        }
        // Only workers hold the job queue now: if they stop, the reader's send fails.
        drop(job_rx);
        drop(res_tx);
        let mut pending = BTreeMap::new();
        let mut next = 0u64;
        let mut written: Result<()> = Ok(());
        for (i, frame) in res_rx {
            pending.insert(i, frame);
            while let Some(frame) = pending.remove(&next) {
                if written.is_ok() {
                    written = frame.and_then(|f| {
                        out.write_all(&f)?;
                        progress.inc(chunk_size as u64);
                        Ok(())
                    });
                }
                next += 1;
            }
            if written.is_err() {
                break;
            }
        }
        let tally = reader
            .join()
            .map_err(|_| anyhow!("reader thread panicked"))??;
        written?;
        Ok(tally)
    })?;
    let trailer = tally.trailer(archive_id);
    out.write_all(&head.finale(&trailer)?)?;
    out.flush()?;
    let (_, stored_len, stored_sha256) = out.finish();
    Ok(Encoded {
        trailer,
        stored_len,
        stored_sha256,
    })
}

/// What decoding established.
pub struct Decoded {
    pub archive_id: String,
    pub plain_len: u64,
    pub plain_sha256: [u8; 32],
    pub stored_len: u64,
    /// None when the caller did not ask for it (see `decode_native`).
    pub stored_sha256: Option<[u8; 32]>,
    /// The archive's header, checked against the catalog entry (§7.5).
    pub header: Option<cairn_core::Metadata>,
}

enum Item {
    Plain(Vec<u8>),
    Fail(anyhow::Error),
    End(Trailer, u64, Option<[u8; 32]>),
}

pub const READ_PIECE: usize = 256 << 10;

/// Native parallel decode of an archive from `input` into `out`.
///
/// `digest_stored`: also hash the stored bytes. A restore whose catalog
/// entry carries the plaintext's SHA-256 does not need it (the plaintext
/// digest, checked against the entry and the authenticated trailer, proves
/// the bytes written; any change to the stored bytes that leaves those
/// intact is harmless), and on a 2-core machine the second SHA-256 stream
/// costs a tenth of the restore's CPU.
pub fn decode_native(
    mut input: impl Read + Send,
    key: &KeyMaterial,
    out: impl Write,
    progress: &Progress,
    digest_stored: bool,
) -> Result<Decoded> {
    let mut parser = FrameParser::new();
    let mut stored = digest_stored.then(Sha256::new);
    let mut stored_len = 0u64;
    let mut buf = vec![0u8; READ_PIECE];
    // The header first, on this thread: the key check must precede any work.
    let (header, meta) = loop {
        if let Some(ev) = parser.next_event()? {
            match ev {
                Event::Header { bytes, meta } => break (bytes, meta),
                Event::Chunk(_) => unreachable!("the header comes first"),
            }
        }
        let got = read_full(&mut input, &mut buf)?;
        if got == 0 {
            parser.finish()?;
        }
        if let Some(h) = stored.as_mut() {
            h.update(&buf[..got]);
        }
        stored_len += got as u64;
        parser.push(&buf[..got]);
    };
    let reader = Arc::new(ArchiveReader::new(header, meta.clone(), key)?);
    let n = workers();
    let (job_tx, job_rx) = sync_channel::<RawChunk>(n * 2);
    // Bounded too: a slow writer must hold back the workers, not buffer behind them.
    let (res_tx, res_rx) = sync_channel::<(u64, Item)>(n * 2);
    let job_rx = shared(job_rx);
    let mut out = out;

    let (trailer, tally, stored_len, stored_sha256) = std::thread::scope(|s| -> Result<_> {
        let rtx = res_tx.clone();
        let r2 = reader.clone();
        s.spawn(move || {
            // Position of the frame being handled: errors are reported there.
            let mut pos = 0u64;
            let result = (|| -> Result<()> {
                loop {
                    while let Some(ev) = parser.next_event()? {
                        let Event::Chunk(c) = ev else {
                            unreachable!("one header")
                        };
                        pos = c.index;
                        if c.last {
                            let t = r2.open_trailer(&c)?;
                            // Anything after the trailer is damage too.
                            loop {
                                let got = read_full(&mut input, &mut buf)?;
                                if got == 0 {
                                    break;
                                }
                                if let Some(h) = stored.as_mut() {
                                    h.update(&buf[..got]);
                                }
                                stored_len += got as u64;
                                parser.push(&buf[..got]);
                            }
                            parser.finish()?;
                            let _ = rtx.send((
                                c.index,
                                Item::End(
                                    t,
                                    stored_len,
                                    stored.take().map(|h| h.finalize().into()),
                                ),
                            ));
                            return Ok(());
                        }
                        if job_tx.send(c).is_err() {
                            return Ok(());
                        }
                        pos += 1;
                    }
                    let got = read_full(&mut input, &mut buf)?;
                    if got == 0 {
                        parser.finish()?;
                    }
                    if let Some(h) = stored.as_mut() {
                        h.update(&buf[..got]);
                    }
                    stored_len += got as u64;
                    parser.push(&buf[..got]);
                }
            })();
            if let Err(e) = result {
                let _ = rtx.send((pos, Item::Fail(e)));
            }
        });
        for _ in 0..n {
            let rx = job_rx.clone();
            let tx = res_tx.clone();
            let r = reader.clone();
            s.spawn(move || {
                while let Some(c) = next_job(&rx) {
                    let item = match r.open_chunk(&c) {
                        Ok(p) => Item::Plain(p),
                        Err(e) => Item::Fail(e.into()),
                    };
                    if tx.send((c.index, item)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(job_rx);
        drop(res_tx);
        let mut tally = Tally::default();
        let mut pending = BTreeMap::new();
        // By value: an early return drops the receiver, so blocked workers see
        // their send fail and stop (the scope joins them before returning).
        for (i, item) in res_rx {
            pending.insert(i, item);
            while let Some(item) = pending.remove(&tally.chunks()) {
                match item {
                    Item::Plain(p) => {
                        out.write_all(&p)?;
                        progress.inc(p.len() as u64);
                        tally.add(&p);
                    }
                    Item::Fail(e) => return Err(e),
                    Item::End(t, len, sha) => return Ok((t, tally, len, sha)),
                }
            }
        }
        Err(anyhow!("the decoder stopped without a result"))
    })?;
    tally.check(&trailer)?;
    out.flush()?;
    Ok(Decoded {
        archive_id: meta.archive_id_hex(),
        plain_len: tally.len(),
        plain_sha256: tally.sha256(),
        stored_len,
        stored_sha256,
        header: Some(meta),
    })
}
