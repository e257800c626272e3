//! Inputs the fuzzers (fuzz/) found, replayed: each must keep failing the
//! way it does now, whichever way its bytes arrive.

use cairn_core::{Decoder, Error, ErrorCode, KeyMaterial, MasterKey};

/// Decodes `bytes` pushed `piece` bytes at a time with the fuzzers' key.
fn decode(bytes: &[u8], piece: usize) -> Result<Vec<u8>, Error> {
    let mut d = Decoder::new(KeyMaterial::Key(MasterKey([0x5a; 32])));
    let mut out = Vec::new();
    for part in bytes.chunks(piece) {
        out.extend(d.push(part)?);
    }
    d.finish()?;
    Ok(out)
}

/// The error for every way of streaming `bytes` (one push, 1..=16 bytes at a time).
fn verdicts(bytes: &[u8]) -> Vec<ErrorCode> {
    std::iter::once(bytes.len().max(1))
        .chain(1..=16)
        .map(|piece| decode(bytes, piece).unwrap_err().code())
        .collect()
}

#[test]
fn a_foreign_gzip_file_gets_one_verdict_however_it_is_streamed() {
    // FLG without FEXTRA: someone else's gzip file. Pushed three bytes at a
    // time it used to be "archive header is corrupted" instead.
    let foreign = [0x1f, 0x8b, 0x08, 0x00, 0, 0, 0, 0, 0, 0x03, 1, 2, 3];
    assert!(
        verdicts(&foreign)
            .iter()
            .all(|c| *c == ErrorCode::NotAnArchive)
    );
    // A damaged compression method, FLG read or not: the same in every case.
    let reproducer = include_bytes!("../../fuzz/regressions/decode/streaming-gzip-verdict");
    let v = verdicts(reproducer);
    assert!(v.iter().all(|c| *c == v[0]), "{v:?}");
    // Three bytes alone are a truncated file, not a verdict on a header
    // whose flags were never seen.
    assert!(
        verdicts(&[0x1f, 0x8b, 0x07])
            .iter()
            .all(|c| *c == ErrorCode::Truncated)
    );
}
