//! Typed errors of the core. Messages name the chunk or field at fault; the
//! host adds the file name and what the user should do.

/// A stable, coarse classification of [`Error`], shared with the WIT interface
/// so that hosts can react the same way whichever engine decoded the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    NotAnArchive,
    UnsupportedVersion,
    CorruptHeader,
    KeyRequired,
    WrongKey,
    InvalidKey,
    Truncated,
    CorruptChunk,
    ForeignChunk,
    OutOfOrder,
    CorruptTrailer,
    ChecksumMismatch,
    TrailingData,
    InvalidParam,
    Catalog,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::NotAnArchive,
        ErrorCode::UnsupportedVersion,
        ErrorCode::CorruptHeader,
        ErrorCode::KeyRequired,
        ErrorCode::WrongKey,
        ErrorCode::InvalidKey,
        ErrorCode::Truncated,
        ErrorCode::CorruptChunk,
        ErrorCode::ForeignChunk,
        ErrorCode::OutOfOrder,
        ErrorCode::CorruptTrailer,
        ErrorCode::ChecksumMismatch,
        ErrorCode::TrailingData,
        ErrorCode::InvalidParam,
        ErrorCode::Catalog,
    ];

    /// The name used in the WIT `error-code` enum and in JSON reports
    /// (`wrong-key`), the same whichever engine or runtime produced it.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::NotAnArchive => "not-an-archive",
            ErrorCode::UnsupportedVersion => "unsupported-version",
            ErrorCode::CorruptHeader => "corrupt-header",
            ErrorCode::KeyRequired => "key-required",
            ErrorCode::WrongKey => "wrong-key",
            ErrorCode::InvalidKey => "invalid-key",
            ErrorCode::Truncated => "truncated",
            ErrorCode::CorruptChunk => "corrupt-chunk",
            ErrorCode::ForeignChunk => "foreign-chunk",
            ErrorCode::OutOfOrder => "out-of-order",
            ErrorCode::CorruptTrailer => "corrupt-trailer",
            ErrorCode::ChecksumMismatch => "checksum-mismatch",
            ErrorCode::TrailingData => "trailing-data",
            ErrorCode::InvalidParam => "invalid-param",
            ErrorCode::Catalog => "catalog",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// True when the archive bytes themselves are damaged or tampered with.
    pub fn is_damage(self) -> bool {
        matches!(
            self,
            ErrorCode::CorruptHeader
                | ErrorCode::Truncated
                | ErrorCode::CorruptChunk
                | ErrorCode::ForeignChunk
                | ErrorCode::OutOfOrder
                | ErrorCode::CorruptTrailer
                | ErrorCode::ChecksumMismatch
                | ErrorCode::TrailingData
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("not a cairn archive ({0})")]
    NotAnArchive(String),
    #[error(
        "archive format version {0} is not supported (this cairn reads versions 1 and 2); upgrade cairn"
    )]
    UnsupportedVersion(u8),
    #[error("archive header is corrupted ({0})")]
    CorruptHeader(String),
    #[error("the archive is encrypted and no key was given")]
    KeyRequired,
    #[error(
        "wrong key: the archive was encrypted with key id {expected}, the key given has id {given}"
    )]
    WrongKey { expected: String, given: String },
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("archive is truncated: {0}")]
    Truncated(String),
    #[error("chunk {index} is corrupted: {reason}")]
    CorruptChunk { index: u64, reason: String },
    #[error(
        "chunk at position {position} belongs to another archive (its archive id is {found}, this archive is {expected})"
    )]
    ForeignChunk {
        position: u64,
        found: String,
        expected: String,
    },
    #[error("chunks are out of order: found chunk {found} at position {position}")]
    OutOfOrder { position: u64, found: u64 },
    #[error("archive trailer is corrupted ({0})")]
    CorruptTrailer(String),
    #[error("checksum mismatch: {0}")]
    ChecksumMismatch(String),
    #[error("unexpected data after the end of the archive ({0} bytes)")]
    TrailingData(u64),
    #[error("invalid {name}: {reason}")]
    InvalidParam { name: &'static str, reason: String },
    #[error("catalog: {0}")]
    Catalog(String),
    /// An error that crossed the component boundary: only its code and message survive.
    #[error("{message}")]
    Remote { code: ErrorCode, message: String },
}

impl Error {
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::NotAnArchive(_) => ErrorCode::NotAnArchive,
            Error::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            Error::CorruptHeader(_) => ErrorCode::CorruptHeader,
            Error::KeyRequired => ErrorCode::KeyRequired,
            Error::WrongKey { .. } => ErrorCode::WrongKey,
            Error::InvalidKey(_) => ErrorCode::InvalidKey,
            Error::Truncated(_) => ErrorCode::Truncated,
            Error::CorruptChunk { .. } => ErrorCode::CorruptChunk,
            Error::ForeignChunk { .. } => ErrorCode::ForeignChunk,
            Error::OutOfOrder { .. } => ErrorCode::OutOfOrder,
            Error::CorruptTrailer(_) => ErrorCode::CorruptTrailer,
            Error::ChecksumMismatch(_) => ErrorCode::ChecksumMismatch,
            Error::TrailingData(_) => ErrorCode::TrailingData,
            Error::InvalidParam { .. } => ErrorCode::InvalidParam,
            Error::Catalog(_) => ErrorCode::Catalog,
            Error::Remote { code, .. } => *code,
        }
    }

    pub(crate) fn corrupt(index: u64, reason: impl Into<String>) -> Self {
        Error::CorruptChunk {
            index,
            reason: reason.into(),
        }
    }

    pub(crate) fn param(name: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidParam {
            name,
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = Error> = core::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    #[test]
    fn error_code_names_round_trip() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_name(c.name()), Some(c));
        }
        assert_eq!(ErrorCode::from_name("no-such-code"), None);
    }
}
