//! `cairn.json`: the marker that makes a destination layout 2, written once
//! (create-only) when the destination is first used, never changed.

use serde::{Deserialize, Serialize};

use crate::envelope;
use crate::error::Result;

pub const MARKER_FORMAT: &str = "cairn-destination";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// The layout version: 2.
    pub layout: u32,
    pub created_at: String,
    pub created_at_ms: i64,
    /// Whether the store refused a second create-only write of this very
    /// marker when it was made: if not, it ignores conditional writes and
    /// two writers can overwrite each other's commits (FORMAT.md §12.6).
    pub conditional_writes: bool,
    /// The layout the destination had before cairn upgraded it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgraded_from: Option<u32>,
}

impl Marker {
    pub fn new(created_at_ms: i64, conditional_writes: bool, upgraded_from: Option<u32>) -> Self {
        Marker {
            layout: super::LAYOUT_VERSION,
            created_at: crate::time::rfc3339(created_at_ms),
            created_at_ms,
            conditional_writes,
            upgraded_from,
        }
    }

    pub fn render(&self) -> Vec<u8> {
        envelope::render(MARKER_FORMAT, super::LAYOUT_VERSION, self, true)
    }

    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let (_, m): (u32, Marker) = envelope::parse(
            bytes,
            super::MARKER_KEY,
            MARKER_FORMAT,
            &[super::LAYOUT_VERSION],
        )?;
        if m.layout != super::LAYOUT_VERSION {
            return Err(crate::Error::Catalog(format!(
                "{}: layout {} is not supported (this cairn reads layout {}); upgrade cairn",
                super::MARKER_KEY,
                m.layout,
                super::LAYOUT_VERSION
            )));
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let m = Marker::new(1_795_359_662_345, true, Some(1));
        assert_eq!(Marker::parse(&m.render()).unwrap(), m);
        assert!(Marker::parse(b"{}").is_err());
    }
}
