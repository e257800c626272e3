//! `cairn list DEST --generations | --segments`: what replication holds and
//! the restorable range, read from the log (generations) and by listing
//! (segments).

use std::io::Write;

use anyhow::Result;
use serde::Serialize;

use super::generation::{GenerationEntry, Listed, generations, list_segments};
use crate::storage::Dest;

#[derive(Debug, Serialize)]
pub struct GenerationListing {
    #[serde(flatten)]
    pub entry: GenerationEntry,
    pub segments: usize,
    pub last_txid: u64,
    /// The newest segment's upload time, when the store keeps one (Unix ms).
    pub last_segment_ms: Option<i64>,
    pub stored_bytes: u64,
}

pub fn generation_listing(dest: &Dest) -> Result<(Vec<GenerationListing>, Vec<Listed>)> {
    let state = crate::repo::require(dest)?;
    let mut gens = Vec::new();
    let mut all = Vec::new();
    for g in generations(&state, None) {
        let segs = list_segments(dest, &g.id)?;
        gens.push(GenerationListing {
            segments: segs.len(),
            last_txid: segs.iter().map(|s| s.max_txid).max().unwrap_or(g.base_txid),
            last_segment_ms: segs.iter().filter_map(|s| s.modified_ms).max(),
            stored_bytes: segs.iter().map(|s| s.size).sum(),
            entry: g,
        });
        all.extend(segs);
    }
    Ok((gens, all))
}

pub fn cli(dest: &Dest, segments: bool, json: bool) -> Result<()> {
    let (gens, segs) = generation_listing(dest)?;
    if json {
        return if segments {
            crate::cli::print_json(&segs)
        } else {
            crate::cli::print_json(&gens)
        };
    }
    let mut out = std::io::stdout().lock();
    if segments {
        writeln!(
            out,
            "{:<26} {:>5} {:>10} {:>10} {:>10}  UPLOADED",
            "GENERATION", "LEVEL", "MIN TXID", "MAX TXID", "BYTES"
        )?;
        for s in &segs {
            writeln!(
                out,
                "{:<26} {:>5} {:>10} {:>10} {:>10}  {}",
                s.generation,
                s.level,
                s.min_txid,
                s.max_txid,
                s.size,
                s.modified_ms.map_or("-".into(), cairn_core::time::rfc3339)
            )?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<26} {:<24} {:<18} {:>9} {:>10} {:>10}  DATABASE (restorable until)",
        "GENERATION", "STARTED", "REASON", "SEGMENTS", "FIRST TXID", "LAST TXID"
    )?;
    for g in &gens {
        writeln!(
            out,
            "{:<26} {:<24} {:<18} {:>9} {:>10} {:>10}  {} ({})",
            g.entry.id,
            g.entry.started_at,
            g.entry.reason,
            g.segments,
            g.entry.first_txid,
            g.last_txid,
            g.entry.db_name,
            g.last_segment_ms
                .map_or(g.entry.started_at.clone(), cairn_core::time::rfc3339)
        )?;
    }
    Ok(())
}
