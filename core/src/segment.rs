//! Replication segments (docs/FORMAT.md §13): the pages changed by one or
//! more consecutive committed transactions (the last version of each), with
//! their transaction ids, the page size, the database size after the last
//! of them and the time. A segment's body is the plaintext of an ordinary
//! cairn archive (§2–§6), so it is compressed, sealed with the chunked AEAD
//! when a key is given, and checked against the trailer's SHA-256 exactly
//! like a snapshot. Also here: the generation ids, the object keys, and
//! applying segments to a page image (restore). All pure.

use std::collections::BTreeMap;

use crate::KeyMaterial;
use crate::encoder::{Encoder, WriterParams};
use crate::error::{Error, Result};
use crate::header::{Compression, SourceKind};
use crate::wal::Txn;

pub const SEGMENT_MAGIC: [u8; 8] = *b"CAIRNSEG";
pub const SEGMENT_VERSION: u8 = 1;
/// Bytes before the page numbers (§13.3).
pub const SEGMENT_HEAD_LEN: usize = 88;
pub const GENERATIONS_PREFIX: &str = "generations/";
/// Length of a generation id: `YYYYMMDDTHHMMSSZ-xxxxxxxx`.
pub const GENERATION_ID_LEN: usize = 25;
/// The log entry kind that starts a generation (§13.5).
pub const GENERATION_KIND: &str = "generation";

/// A generation id: the time it started, then 8 hex digits of the host's
/// randomness; ids sort by time, like snapshot ids (§7.2).
pub fn generation_id(started_at_ms: i64, random: [u8; 4]) -> String {
    crate::catalog::snapshot_id(started_at_ms, random)
}

pub fn is_generation_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == GENERATION_ID_LEN
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && &b[15..17] == b"Z-"
        && b[17..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// `generations/<gen>/segments/`: where a generation's segments are listed.
pub fn segments_prefix(generation: &str) -> String {
    format!("{GENERATIONS_PREFIX}{generation}/segments/")
}

/// `generations/<gen>/segments/<level 2 digits>/<min 16 hex>-<max 16 hex>.seg.{gz,cairn}`
/// for a deflate segment: within a level, keys sort by transaction id.
pub fn segment_key(
    generation: &str,
    level: u8,
    min_txid: u64,
    max_txid: u64,
    encrypted: bool,
) -> String {
    segment_key_ext(
        generation,
        level,
        min_txid,
        max_txid,
        segment_ext(encrypted, Compression::Deflate { level: 6 }),
    )
}

/// A segment object's extension: `cairn` when encrypted (whatever the
/// codec), else `zst` for zstd and `gz` for deflate, so that an
/// unencrypted segment opens with `zstd -d` or `gunzip` (§13.2).
pub fn segment_ext(encrypted: bool, compression: Compression) -> &'static str {
    match (encrypted, compression) {
        (true, _) => "cairn",
        (false, Compression::Zstd { .. }) => "zst",
        (false, _) => "gz",
    }
}

/// [`segment_key`] with the extension given ([`segment_ext`]).
pub fn segment_key_ext(
    generation: &str,
    level: u8,
    min_txid: u64,
    max_txid: u64,
    ext: &str,
) -> String {
    format!(
        "{}{level:02}/{min_txid:016x}-{max_txid:016x}.seg.{ext}",
        segments_prefix(generation)
    )
}

/// What a segment key says: (generation, level, min txid, max txid).
pub fn parse_segment_key(key: &str) -> Option<(String, u8, u64, u64)> {
    let rest = key.strip_prefix(GENERATIONS_PREFIX)?;
    let (generation, rest) = rest.split_once('/')?;
    if !is_generation_id(generation) {
        return None;
    }
    let rest = rest.strip_prefix("segments/")?;
    let (level, name) = rest.split_once('/')?;
    if level.len() != 2 || !level.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let range = name
        .strip_suffix(".seg.gz")
        .or_else(|| name.strip_suffix(".seg.zst"))
        .or_else(|| name.strip_suffix(".seg.cairn"))?;
    let (lo, hi) = range.split_once('-')?;
    let hex16 = |s: &str| {
        (s.len() == 16
            && s.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()))
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
    };
    let (lo, hi) = (hex16(lo)?, hex16(hi)?);
    if lo == 0 || lo > hi {
        return None;
    }
    Some((generation.to_string(), level.parse().ok()?, lo, hi))
}

/// A segment's description: everything but the pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    pub generation: String,
    pub level: u8,
    pub min_txid: u64,
    pub max_txid: u64,
    pub page_size: u32,
    /// Database size in pages after transaction `max_txid`.
    pub db_pages: u32,
    /// The smallest database size after any of its transactions: applying
    /// the segment first cuts the database to this (pages past it were
    /// dropped by a transaction and are not in the segment).
    pub min_db_pages: u32,
    /// When the replicator saw `max_txid` committed (Unix ms).
    pub time_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub info: SegmentInfo,
    /// Page number → its last version in the segment's transactions.
    pub pages: BTreeMap<u32, Vec<u8>>,
}

impl Segment {
    /// The segment of consecutive transactions `txns`, the first of which
    /// gets id `first_txid`: each page's last version, pages past the
    /// database's size after each transaction dropped (SQLite truncates them).
    pub fn from_txns(
        generation: &str,
        first_txid: u64,
        page_size: u32,
        time_ms: i64,
        txns: &[Txn],
    ) -> Result<Segment> {
        let Some(last) = txns.last() else {
            return Err(Error::param("segment", "it needs at least one transaction"));
        };
        if first_txid == 0 {
            return Err(Error::param("segment", "transaction ids start at 1"));
        }
        let mut pages = BTreeMap::new();
        let mut min_db_pages = u32::MAX;
        for t in txns {
            for (p, data) in &t.pages {
                pages.insert(*p, data.clone());
            }
            pages.retain(|p, _| *p <= t.db_pages);
            min_db_pages = min_db_pages.min(t.db_pages);
        }
        Ok(Segment {
            info: SegmentInfo {
                generation: generation.to_string(),
                level: 0,
                min_txid: first_txid,
                max_txid: first_txid + txns.len() as u64 - 1,
                page_size,
                db_pages: last.db_pages,
                min_db_pages,
                time_ms,
            },
            pages,
        })
    }

    /// Merges consecutive segments of one generation into one (compaction):
    /// the result restores to the same pages as applying them in order.
    pub fn merge(level: u8, segs: &[Segment]) -> Result<Segment> {
        let Some(first) = segs.first() else {
            return Err(Error::param("segment", "nothing to merge"));
        };
        let mut out = Segment {
            info: SegmentInfo {
                level,
                ..first.info.clone()
            },
            pages: BTreeMap::new(),
        };
        let mut next = first.info.min_txid;
        for s in segs {
            check_next(&out.info.generation, next, &s.info)?;
            if s.info.page_size != first.info.page_size {
                return Err(Error::param("segment", "page sizes differ"));
            }
            out.pages.retain(|p, _| *p <= s.info.min_db_pages);
            for (p, d) in &s.pages {
                out.pages.insert(*p, d.clone());
            }
            out.info.min_db_pages = out.info.min_db_pages.min(s.info.min_db_pages);
            out.info.max_txid = s.info.max_txid;
            out.info.db_pages = s.info.db_pages;
            out.info.time_ms = s.info.time_ms;
            next = s.info.max_txid + 1;
        }
        Ok(out)
    }

    /// The segment body (§13.3): the plaintext of the segment's archive.
    pub fn body(&self) -> Vec<u8> {
        let i = &self.info;
        let n = self.pages.len();
        let mut b = Vec::with_capacity(SEGMENT_HEAD_LEN + n * (4 + i.page_size as usize));
        b.extend_from_slice(&SEGMENT_MAGIC);
        b.push(SEGMENT_VERSION);
        b.push(i.level);
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&i.page_size.to_le_bytes());
        b.extend_from_slice(&i.min_txid.to_le_bytes());
        b.extend_from_slice(&i.max_txid.to_le_bytes());
        b.extend_from_slice(&i.db_pages.to_le_bytes());
        b.extend_from_slice(&(n as u32).to_le_bytes());
        b.extend_from_slice(&i.time_ms.to_le_bytes());
        b.extend_from_slice(&i.min_db_pages.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        let mut gen_id = [0u8; 32];
        gen_id[..i.generation.len()].copy_from_slice(i.generation.as_bytes());
        b.extend_from_slice(&gen_id);
        for p in self.pages.keys() {
            b.extend_from_slice(&p.to_le_bytes());
        }
        for d in self.pages.values() {
            b.extend_from_slice(d);
        }
        b
    }

    /// Parses a segment body; `what` names it in errors (its key).
    pub fn parse_body(b: &[u8], what: &str) -> Result<Segment> {
        let bad = |why: String| Error::Catalog(format!("segment {what}: {why}"));
        if b.len() < SEGMENT_HEAD_LEN || b[..8] != SEGMENT_MAGIC {
            return Err(bad("it is not a segment (no CAIRNSEG magic)".into()));
        }
        if b[8] != SEGMENT_VERSION {
            return Err(bad(format!(
                "segment version {} is not supported (this cairn reads {SEGMENT_VERSION}); upgrade cairn",
                b[8]
            )));
        }
        let u32at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let page_size = u32at(12);
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(bad(format!("page size {page_size} is not valid")));
        }
        let (min_txid, max_txid) = (u64at(16), u64at(24));
        if min_txid == 0 || min_txid > max_txid {
            return Err(bad(format!(
                "transaction range {min_txid}..{max_txid} is not valid"
            )));
        }
        let db_pages = u32at(32);
        let n = u32at(36) as usize;
        let time_ms = u64at(40) as i64;
        let min_db_pages = u32at(48);
        if min_db_pages > db_pages {
            return Err(bad(format!(
                "its smallest database size {min_db_pages} is over its final size {db_pages}"
            )));
        }
        let gen_raw = &b[56..88];
        let gen_len = gen_raw.iter().position(|c| *c == 0).unwrap_or(32);
        let generation = core::str::from_utf8(&gen_raw[..gen_len])
            .ok()
            .filter(|g| is_generation_id(g))
            .ok_or_else(|| bad("its generation id is not valid".into()))?
            .to_string();
        let ps = page_size as usize;
        let want = (n as u64)
            .checked_mul(4 + ps as u64)
            .and_then(|x| x.checked_add(SEGMENT_HEAD_LEN as u64));
        if want != Some(b.len() as u64) {
            return Err(bad(format!(
                "it is {} bytes, but {n} pages of {ps} bytes need {}",
                b.len(),
                want.map_or("more".into(), |w| w.to_string())
            )));
        }
        let data_at = SEGMENT_HEAD_LEN + 4 * n;
        let mut pages = BTreeMap::new();
        let mut prev = 0u32;
        for k in 0..n {
            let p = u32at(SEGMENT_HEAD_LEN + 4 * k);
            if p <= prev || p > db_pages {
                return Err(bad(format!(
                    "page number {p} is out of order or past the database's {db_pages} pages"
                )));
            }
            prev = p;
            pages.insert(p, b[data_at + k * ps..data_at + (k + 1) * ps].to_vec());
        }
        Ok(Segment {
            info: SegmentInfo {
                generation,
                level: b[9],
                min_txid,
                max_txid,
                page_size,
                db_pages,
                min_db_pages,
                time_ms,
            },
            pages,
        })
    }

    /// The segment's object: its body as a cairn archive. `params` gives
    /// the archive id, database name, codec and key; its time, page size
    /// and source are set from the segment.
    pub fn build(&self, mut params: WriterParams) -> Result<Vec<u8>> {
        params.source = SourceKind::File;
        params.created_at_ms = self.info.time_ms;
        params.page_size = self.info.page_size;
        if params.compression == Compression::None {
            params.compression = Compression::Deflate {
                level: crate::DEFAULT_LEVEL,
            };
        }
        let mut enc = Encoder::new(params)?;
        let mut out = enc.push(&self.body())?;
        let (tail, _) = enc.finish()?;
        out.extend(tail);
        Ok(out)
    }

    /// Opens a segment object stored under `key`: decodes and checks the
    /// archive (every chunk, the trailer's SHA-256), parses the body, and
    /// checks that it is the segment the key names.
    pub fn open(bytes: &[u8], key: &str, material: &KeyMaterial) -> Result<Segment> {
        Segment::open_with(bytes, key, &mut Keys::new(material.clone()))
    }

    /// [`open`](Self::open) with the master keys derived so far: a
    /// passphrase is stretched once per Argon2id salt, not once per segment.
    pub fn open_with(bytes: &[u8], key: &str, keys: &mut Keys) -> Result<Segment> {
        let body = keys.decode(bytes)?;
        let seg = Segment::parse_body(&body, key)?;
        let i = &seg.info;
        match parse_segment_key(key) {
            Some((g, l, lo, hi))
                if g == i.generation && l == i.level && lo == i.min_txid && hi == i.max_txid => {}
            _ => {
                return Err(Error::Catalog(format!(
                    "segment {key}: it holds generation {} level {} transactions {}..{}, not what its name says: it was renamed or copied",
                    i.generation, i.level, i.min_txid, i.max_txid
                )));
            }
        }
        Ok(seg)
    }
}

/// Key material for opening many segments, with the master keys derived
/// from a passphrase remembered by their Argon2id parameters and salt.
pub struct Keys {
    material: KeyMaterial,
    derived: Vec<(crate::header::Kdf, crate::key::MasterKey)>,
}

impl Keys {
    pub fn new(material: KeyMaterial) -> Self {
        Keys {
            material,
            derived: Vec::new(),
        }
    }

    /// Decodes a whole archive with every check of a snapshot decode.
    fn decode(&mut self, bytes: &[u8]) -> Result<Vec<u8>> {
        use crate::decoder::{ArchiveReader, Tally};
        use crate::frame::{Event, FrameParser};
        use crate::header::{Encryption, Kdf};
        let mut parser = FrameParser::new();
        parser.push(bytes);
        let mut reader: Option<ArchiveReader> = None;
        let mut tally = Tally::default();
        let mut out = Vec::new();
        while let Some(ev) = parser.next_event()? {
            match ev {
                Event::Header { bytes, mut meta } => {
                    let material = match (&self.material, meta.encryption) {
                        (
                            KeyMaterial::Passphrase(_),
                            Encryption::Aes256GcmStream { salt, kdf, key_id },
                        ) if matches!(kdf, Kdf::Argon2id { .. }) => {
                            let master = match self.derived.iter().find(|(k, _)| *k == kdf) {
                                Some((_, m)) => m.clone(),
                                None => {
                                    let m = self.material.master_for(&kdf)?;
                                    self.derived.push((kdf, m.clone()));
                                    m
                                }
                            };
                            // The reader needs the master key only; the header
                            // bytes (the AEAD's associated data) stay as they are.
                            meta.encryption = Encryption::Aes256GcmStream {
                                salt,
                                kdf: Kdf::RawKey,
                                key_id,
                            };
                            KeyMaterial::Key(master)
                        }
                        _ => self.material.clone(),
                    };
                    reader = Some(ArchiveReader::new(bytes, meta, &material)?);
                }
                Event::Chunk(c) => {
                    let r = reader.as_ref().expect("the header comes first");
                    if c.last {
                        tally.check(&r.open_trailer(&c)?)?;
                    } else {
                        let plain = r.open_chunk(&c)?;
                        tally.add(&plain);
                        out.extend_from_slice(&plain);
                    }
                }
            }
        }
        parser.finish()?;
        Ok(out)
    }
}

fn check_next(generation: &str, next: u64, i: &SegmentInfo) -> Result<()> {
    if i.generation != generation {
        return Err(Error::Catalog(format!(
            "segment {}..{} belongs to generation {}, not {generation}",
            i.min_txid, i.max_txid, i.generation
        )));
    }
    if i.min_txid != next {
        return Err(Error::Catalog(format!(
            "generation {generation}: expected the segment starting at transaction {next}, found one starting at {}{}",
            i.min_txid,
            if i.min_txid > next {
                ": segments are missing"
            } else {
                ""
            }
        )));
    }
    Ok(())
}

/// Which segments of a generation, listed by key, to apply to reach the
/// newest point at or before `target` (a txid or a time): the furthest
/// segment end reachable from `first_txid` through segments that follow one
/// another without a gap, by the fewest objects ([`route`]). Returns the
/// chosen keys in order, or an error when no segment starts at `first_txid`.
/// A generation must apply at least its first segment (its snapshot sits
/// inside that segment's range, §13.4). With [`Stop::Time`] the route goes
/// as far as the segments do; the host cuts it once a segment's time (known
/// only when it is opened) passes the target, and plans again ([`route`]
/// with a txid bound) from there.
pub fn plan(
    generation: &str,
    first_txid: u64,
    listed: &[(String, SegmentInfoLite)],
    stop: Stop,
) -> Result<Vec<String>> {
    let lite: Vec<SegmentInfoLite> = listed.iter().map(|l| l.1).collect();
    let bound = match stop {
        Stop::Txid(t) => Some(t),
        Stop::Newest | Stop::Time(_) => None,
    };
    let out: Vec<String> = route(&lite, first_txid, bound)
        .into_iter()
        .map(|i| listed[i].0.clone())
        .collect();
    if out.is_empty() {
        return Err(Error::Catalog(format!(
            "generation {generation} has no segment starting at transaction {first_txid}: it cannot be restored"
        )));
    }
    Ok(out)
}

/// The segments (indexes into `listed`) to apply from transaction `from`
/// to reach the furthest segment end at or before `bound` (no bound: the
/// furthest there is): each starts where the previous one ends; of routes
/// that reach equally far, the one with the fewest segments, then the one
/// using higher levels. Empty when no segment that fits starts at `from`.
///
/// Compaction (§13.9) leaves merged segments beside the ones they cover,
/// and two compactors racing can leave overlapping ones at one level, so
/// the segments form a graph over transaction ids, not a list: this is a
/// shortest path in it, in txid order (every edge goes forward).
pub fn route(listed: &[SegmentInfoLite], from: u64, bound: Option<u64>) -> Vec<usize> {
    let bound = bound.unwrap_or(u64::MAX);
    let mut by_start: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, l) in listed.iter().enumerate() {
        if l.min_txid >= from && l.max_txid <= bound && l.min_txid <= l.max_txid {
            by_start.entry(l.min_txid).or_default().push(i);
        }
    }
    // best[next txid] = (segments used, -(sum of levels), the segment that got there)
    let mut best: BTreeMap<u64, (usize, i64, Option<usize>)> = BTreeMap::new();
    best.insert(from, (0, 0, None));
    let mut at = from;
    while let Some((&pos, &(n, lv, _))) = best.range(at..).next() {
        let Some(after) = pos.checked_add(1) else {
            break;
        };
        at = after;
        let Some(cands) = by_start.get(&pos) else {
            continue;
        };
        for &i in cands {
            let l = listed[i];
            let Some(next) = l.max_txid.checked_add(1) else {
                continue;
            };
            let cand = (n + 1, lv - i64::from(l.level), Some(i));
            let better = match best.get(&next) {
                None => true,
                Some(old) => (cand.0, cand.1, cand.2) < (old.0, old.1, old.2),
            };
            if better {
                best.insert(next, cand);
            }
        }
    }
    let (&end, _) = best.iter().next_back().expect("from is in it");
    let mut out = Vec::new();
    let mut pos = end;
    while let Some((_, _, Some(i))) = best.get(&pos) {
        out.push(*i);
        pos = listed[*i].min_txid;
    }
    out.reverse();
    out
}

/// What a segment's key tells, enough to plan a restore by txid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfoLite {
    pub level: u8,
    pub min_txid: u64,
    pub max_txid: u64,
}

/// How far a restore goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Newest,
    /// The newest segment end at or before this transaction id.
    Txid(u64),
    /// The newest segment whose time is at or before this (Unix ms); known
    /// only once a segment is opened, so [`Applier`] checks it.
    Time(i64),
}

/// Applies a generation's segments, in order, to a database image (the
/// host's file, through [`PageWrite`]s): checks that each follows the last
/// and has the snapshot's page size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applier {
    pub generation: String,
    pub page_size: u32,
    /// The next transaction id expected.
    pub next_txid: u64,
    /// Database size in pages after the last segment applied.
    pub db_pages: Option<u32>,
    pub last_time_ms: Option<i64>,
}

impl Applier {
    pub fn new(generation: &str, page_size: u32, first_txid: u64) -> Self {
        Applier {
            generation: generation.to_string(),
            page_size,
            next_txid: first_txid,
            db_pages: None,
            last_time_ms: None,
        }
    }

    /// Checks `seg` can come next; the caller then cuts its file to
    /// `min_db_pages * page_size`, sets its length to `db_pages *
    /// page_size` and writes the pages at `(pgno - 1) * page_size`.
    pub fn accept(&mut self, seg: &Segment) -> Result<()> {
        check_next(&self.generation, self.next_txid, &seg.info)?;
        if seg.info.page_size != self.page_size {
            return Err(Error::Catalog(format!(
                "segment {}..{} has page size {}, the snapshot {}",
                seg.info.min_txid, seg.info.max_txid, seg.info.page_size, self.page_size
            )));
        }
        self.next_txid = seg.info.max_txid + 1;
        self.db_pages = Some(seg.info.db_pages);
        self.last_time_ms = Some(seg.info.time_ms);
        Ok(())
    }

    /// Applies `seg` to an in-memory image: cut to `min_db_pages`, set
    /// the length to `db_pages` (new space zeroed), write the pages.
    pub fn apply(&mut self, image: &mut Vec<u8>, seg: &Segment) -> Result<()> {
        self.accept(seg)?;
        let ps = self.page_size as usize;
        image.truncate((seg.info.min_db_pages as usize * ps).min(image.len()));
        image.resize(seg.info.db_pages as usize * ps, 0);
        for (p, d) in &seg.pages {
            let at = (*p as usize - 1) * ps;
            image[at..at + ps].copy_from_slice(d);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::Kdf;
    use crate::key::MasterKey;
    use proptest::prelude::*;

    const GEN: &str = "20261202T033000Z-0a1b2c3d";

    fn params(key: Option<[u8; 32]>) -> WriterParams {
        WriterParams {
            archive_id: [7; 16],
            source: SourceKind::Sqlite,
            db_name: "app.db".into(),
            created_at_ms: 0,
            page_size: 0,
            chunk_size: crate::MIN_CHUNK_SIZE,
            compression: Compression::Deflate { level: 6 },
            encryption: key.map(|k| crate::encoder::EncryptionParams {
                master: MasterKey(k),
                kdf: Kdf::RawKey,
                salt: [3; 32],
            }),
        }
    }

    fn txn(pages: &[(u32, u8)], db_pages: u32) -> Txn {
        Txn {
            first_frame: 1,
            last_frame: 1,
            db_pages,
            pages: pages.iter().map(|(p, f)| (*p, vec![*f; 512])).collect(),
        }
    }

    #[test]
    fn keys_sort_and_round_trip() {
        let k = segment_key(GEN, 0, 1, 0x2a, true);
        assert_eq!(
            k,
            "generations/20261202T033000Z-0a1b2c3d/segments/00/0000000000000001-000000000000002a.seg.cairn"
        );
        assert_eq!(parse_segment_key(&k), Some((GEN.into(), 0, 1, 42)));
        assert!(segment_key(GEN, 0, 9, 9, false) < segment_key(GEN, 0, 10, 10, false));
        for bad in [
            "generations/x/segments/00/0000000000000001-0000000000000001.seg.gz",
            &segment_key(GEN, 0, 2, 1, false),
            &k.replace(".seg.cairn", ".seg"),
            &k.replace("/00/", "/0/"),
            &k.replace("2a.", "2A."),
        ] {
            assert_eq!(parse_segment_key(bad), None, "{bad}");
        }
        assert!(is_generation_id(&generation_id(
            1_795_359_662_345,
            [1, 2, 3, 4]
        )));
    }

    #[test]
    fn build_open_round_trip_and_damage_is_caught() {
        let seg = Segment::from_txns(
            GEN,
            5,
            512,
            1000,
            &[txn(&[(1, 1), (3, 3)], 3), txn(&[(2, 2), (3, 9)], 3)],
        )
        .unwrap();
        assert_eq!((seg.info.min_txid, seg.info.max_txid), (5, 6));
        assert_eq!(seg.pages[&3], vec![9; 512]);
        for (key, comp) in [None, Some([5u8; 32])].into_iter().flat_map(|k| {
            [
                (k, Compression::Deflate { level: 6 }),
                (k, Compression::Zstd { level: 3 }),
            ]
        }) {
            let mut p = params(key);
            p.compression = comp;
            let bytes = seg.build(p).unwrap();
            let ext = segment_ext(key.is_some(), comp);
            let name = segment_key_ext(GEN, 0, 5, 6, ext);
            assert_eq!(parse_segment_key(&name), Some((GEN.into(), 0, 5, 6)));
            if key.is_none() {
                // The unencrypted containers are what `gunzip` / `zstd -d` read.
                let magic: &[u8] = if comp.is_zstd() {
                    &[0x5c, 0x2a, 0x4d, 0x18]
                } else {
                    &[0x1f, 0x8b]
                };
                assert!(bytes.starts_with(magic), "{ext}");
            }
            let mat = key.map_or(KeyMaterial::None, |k| KeyMaterial::Key(MasterKey(k)));
            assert_eq!(Segment::open(&bytes, &name, &mat).unwrap(), seg);
            // Under another name: refused.
            let e = Segment::open(&bytes, &segment_key_ext(GEN, 0, 5, 7, ext), &mat)
                .unwrap_err()
                .to_string();
            assert!(e.contains("not what its name says"), "{e}");
            let mut bad = bytes.clone();
            let at = bad.len() / 2;
            bad[at] ^= 0x40;
            assert!(Segment::open(&bad, &name, &mat).is_err());
            if key.is_some() {
                let e = Segment::open(&bytes, &name, &KeyMaterial::Key(MasterKey([6; 32])))
                    .unwrap_err();
                assert_eq!(e.code(), crate::ErrorCode::WrongKey);
            }
        }
    }

    #[test]
    fn a_passphrase_is_stretched_once_for_many_segments() {
        let kdf = Kdf::Argon2id {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
            salt: [4; 16],
        };
        let master = crate::key::derive_from_passphrase("pw", &kdf).unwrap();
        let mut p = params(None);
        p.encryption = Some(crate::encoder::EncryptionParams {
            master,
            kdf,
            salt: [3; 32],
        });
        let seg = Segment::from_txns(GEN, 1, 512, 0, &[txn(&[(1, 1)], 1)]).unwrap();
        let bytes = seg.build(p).unwrap();
        let name = segment_key(GEN, 0, 1, 1, true);
        let mut keys = Keys::new(KeyMaterial::Passphrase("pw".into()));
        for _ in 0..3 {
            assert_eq!(Segment::open_with(&bytes, &name, &mut keys).unwrap(), seg);
        }
        assert_eq!(keys.derived.len(), 1);
        let mut wrong = Keys::new(KeyMaterial::Passphrase("nope".into()));
        let e = Segment::open_with(&bytes, &name, &mut wrong).unwrap_err();
        assert_eq!(e.code(), crate::ErrorCode::WrongKey);
    }

    #[test]
    fn truncating_transactions_drop_pages() {
        let seg = Segment::from_txns(
            GEN,
            1,
            512,
            0,
            &[txn(&[(4, 4), (5, 5)], 5), txn(&[(1, 1)], 3)],
        )
        .unwrap();
        assert_eq!(seg.pages.keys().copied().collect::<Vec<_>>(), vec![1]);
        assert_eq!(seg.info.db_pages, 3);
    }

    #[test]
    fn body_errors_name_the_segment() {
        let seg = Segment::from_txns(GEN, 1, 512, 0, &[txn(&[(1, 1)], 1)]).unwrap();
        let b = seg.body();
        let e = Segment::parse_body(&b[..b.len() - 1], "k")
            .unwrap_err()
            .to_string();
        assert!(e.contains("segment k") && e.contains("pages"), "{e}");
        let mut v = b.clone();
        v[8] = 9;
        assert!(
            Segment::parse_body(&v, "k")
                .unwrap_err()
                .to_string()
                .contains("upgrade")
        );
        assert!(Segment::parse_body(b"nope", "k").is_err());
    }

    #[test]
    fn applier_refuses_gaps_and_other_generations() {
        let a = Segment::from_txns(GEN, 1, 512, 0, &[txn(&[(1, 1)], 1)]).unwrap();
        let c = Segment::from_txns(GEN, 3, 512, 0, &[txn(&[(1, 1)], 1)]).unwrap();
        let mut ap = Applier::new(GEN, 512, 1);
        let mut img = Vec::new();
        ap.apply(&mut img, &a).unwrap();
        let e = ap.apply(&mut img, &c).unwrap_err().to_string();
        assert!(e.contains("segments are missing"), "{e}");
        let other =
            Segment::from_txns("20261202T033000Z-ffffffff", 2, 512, 0, &[txn(&[(1, 1)], 1)])
                .unwrap();
        assert!(ap.apply(&mut img, &other).is_err());
    }

    #[test]
    fn plan_prefers_compacted_segments_and_stops_at_a_txid() {
        let lite = |level, lo, hi| {
            (
                segment_key(GEN, level, lo, hi, false),
                SegmentInfoLite {
                    level,
                    min_txid: lo,
                    max_txid: hi,
                },
            )
        };
        let listed = vec![
            lite(0, 1, 1),
            lite(0, 2, 3),
            lite(0, 4, 4),
            lite(1, 1, 3),
            lite(0, 5, 6),
        ];
        let keys = |v: Vec<String>| -> Vec<(u64, u64)> {
            v.iter()
                .map(|k| {
                    let p = parse_segment_key(k).unwrap();
                    (p.2, p.3)
                })
                .collect()
        };
        assert_eq!(
            keys(plan(GEN, 1, &listed, Stop::Newest).unwrap()),
            vec![(1, 3), (4, 4), (5, 6)]
        );
        assert_eq!(
            keys(plan(GEN, 1, &listed, Stop::Txid(2)).unwrap()),
            vec![(1, 1)]
        );
        assert_eq!(
            keys(plan(GEN, 1, &listed, Stop::Txid(5)).unwrap()),
            vec![(1, 3), (4, 4)]
        );
        assert!(plan(GEN, 7, &listed, Stop::Newest).is_err());
    }

    proptest! {
        /// Applying segments one by one, or merged, gives the same image as
        /// replaying every transaction page by page.
        #[test]
        fn segments_and_merges_replay_transactions(
            txns in prop::collection::vec(
                (prop::collection::vec((1u32..12, any::<u8>()), 1..6), 1u32..12), 1..10),
            split in 1usize..10,
        ) {
            let txns: Vec<Txn> = txns.iter().map(|(p, n)| {
                let n = (*n).max(p.iter().map(|x| x.0).max().unwrap_or(1));
                txn(p, n)
            }).collect();
            // The reference: replay each transaction.
            let mut want: Vec<u8> = Vec::new();
            for t in &txns {
                want.resize((t.db_pages as usize * 512).max(want.len()), 0);
                for (p, d) in &t.pages { let at = (*p as usize - 1) * 512; want[at..at+512].copy_from_slice(d); }
                want.truncate(t.db_pages as usize * 512);
            }
            let split = split.min(txns.len());
            let a = Segment::from_txns(GEN, 1, 512, 10, &txns[..split]).unwrap();
            let mut segs = vec![a];
            if split < txns.len() {
                segs.push(Segment::from_txns(GEN, split as u64 + 1, 512, 20, &txns[split..]).unwrap());
            }
            let mut img = Vec::new();
            let mut ap = Applier::new(GEN, 512, 1);
            for s in &segs { ap.apply(&mut img, s).unwrap(); }
            prop_assert_eq!(&img, &want);
            let m = Segment::merge(1, &segs).unwrap();
            let mut img2 = Vec::new();
            Applier::new(GEN, 512, 1).apply(&mut img2, &m).unwrap();
            prop_assert_eq!(&img2, &want);
            prop_assert_eq!(Segment::parse_body(&m.body(), "m").unwrap(), m);
        }
    }
}
