//! Behaviour docs/FORMAT.md once left unstated (issue 15 §4), pinned here
//! as the spec now states it: what "k" is in "it ends after chunk k" (§3.5),
//! a final frame shorter than a tag (§4.8, §5.2), bytes after the metadata
//! (§2.3), and a duplicated envelope field (§7.3).

mod common;
use common::*;

use cairn_core::ErrorCode;
use cairn_core::catalog::Catalog;

/// Rewrites an encrypted frame's body and length, with a valid frame CRC.
fn reframe(frame: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = frame[..33].to_vec();
    out[25..29].copy_from_slice(&(body.len() as u32).to_le_bytes());
    let crc = crc32fast::hash(&out[..29]);
    out[29..33].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(body);
    out
}

#[test]
fn k_is_the_index_of_the_last_whole_data_chunk() {
    for enc in [false, true] {
        let f = frames(&params(0, enc), &sample(3 * CHUNK as usize));
        // header, chunks 0..=2, final: cut after chunks 0 and 1 are whole.
        let cut: usize = f[..3].iter().map(Vec::len).sum();
        let err = decode(&f.concat()[..cut]).unwrap_err();
        assert_eq!(err.code(), ErrorCode::Truncated);
        assert!(
            err.to_string()
                .contains("it ends after chunk 1, before the end-of-archive trailer"),
            "{err}"
        );
    }
}

#[test]
fn a_final_frame_shorter_than_a_tag_is_a_corrupt_trailer() {
    let mut f = frames(&params(6, true), &sample(2 * CHUNK as usize));
    let last = f.len() - 1;
    f[last] = reframe(&f[last], &f[last][33..41]);
    let err = decode(&f.concat()).unwrap_err();
    assert_eq!(err.code(), ErrorCode::CorruptTrailer, "{err}");
    assert!(err.to_string().contains("authentication failed"), "{err}");
    // A data frame that short is a corrupt chunk, named as such.
    let mut f = frames(&params(6, true), &sample(2 * CHUNK as usize));
    f[1] = reframe(&f[1], &f[1][33..41]);
    let err = decode(&f.concat()).unwrap_err();
    assert_eq!(err.code(), ErrorCode::CorruptChunk, "{err}");
    assert!(
        err.to_string()
            .contains("shorter than an authentication tag"),
        "{err}"
    );
}

#[test]
fn bytes_after_the_metadata_are_a_corrupt_header() {
    let mut f = frames(&params(0, true), &sample(100));
    let h = &f[0];
    let meta_len = u16::from_le_bytes([h[11], h[12]]) as usize;
    let mut body = h[..13 + meta_len].to_vec();
    body.push(0);
    body[11..13].copy_from_slice(&((meta_len + 1) as u16).to_le_bytes());
    let crc = crc32fast::hash(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    f[0] = body;
    let err = decode(&f.concat()).unwrap_err();
    assert_eq!(err.code(), ErrorCode::CorruptHeader, "{err}");
    assert!(
        err.to_string()
            .contains("1 unexpected bytes after the metadata"),
        "{err}"
    );
}

#[test]
fn a_duplicated_envelope_field_is_invalid_json() {
    let good = String::from_utf8(Catalog::default().render()).unwrap();
    for dup in [
        good.replacen("{\"format\"", "{\"format\":\"x\",\"format\"", 1),
        good.replacen(",\"body\":", ",\"body\":{},\"body\":", 1),
    ] {
        let err = Catalog::parse(dup.as_bytes()).unwrap_err();
        assert_eq!(err.code(), ErrorCode::Catalog);
        assert!(
            err.to_string()
                .contains("not valid catalog JSON (duplicate field"),
            "{err}"
        );
    }
    let marker = cairn_core::layout::Marker::parse(
        &String::from_utf8(cairn_core::envelope::render(
            "cairn-destination",
            2,
            &serde_json::json!({"layout": 2}),
            false,
        ))
        .unwrap()
        .replacen("{\"format\"", "{\"format\":\"x\",\"format\"", 1)
        .into_bytes(),
    )
    .unwrap_err();
    assert!(marker.to_string().contains("duplicate field"), "{marker}");
}
