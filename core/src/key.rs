//! Key material: parsing a 32-byte key from hex or base64 text, stretching a
//! passphrase with Argon2id, and the HKDF derivations of docs/FORMAT.md §4.
//! The host reads key files and environment variables; this module only sees
//! their contents, and never puts key bytes into an error message.

use hkdf::Hkdf;
use sha2::Sha256;

use crate::error::{Error, Result};
use crate::header::Kdf;

/// Argon2id defaults for new archives: 64 MiB, 3 passes, 1 lane (RFC 9106's
/// second recommended option, with one lane so results match in wasm).
pub const ARGON2_M_COST_KIB: u32 = 64 * 1024;
pub const ARGON2_T_COST: u32 = 3;
pub const ARGON2_P_COST: u32 = 1;
/// Upper bounds a reader accepts: a hostile header must not be able to ask
/// for gigabytes of memory or hours of work.
pub const ARGON2_MAX_M_COST_KIB: u32 = 1024 * 1024;
pub const ARGON2_MAX_T_COST: u32 = 16;
pub const ARGON2_MAX_P_COST: u32 = 8;

/// A 32-byte master key. Debug output never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey(pub [u8; 32]);

impl core::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "MasterKey(id {})", self.key_id_hex())
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        // Best effort: volatile writes so the compiler keeps the wipe.
        for b in self.0.iter_mut() {
            unsafe { core::ptr::write_volatile(b, 0) };
        }
    }
}

impl MasterKey {
    /// Parses 64 hex digits or 44 characters of standard base64 (32 bytes),
    /// ignoring surrounding white space.
    pub fn parse(text: &str) -> Result<Self> {
        let t = text.trim();
        let bytes = if t.len() == 64 && t.bytes().all(|c| c.is_ascii_hexdigit()) {
            decode_hex(t)
        } else if let Some(b) = decode_base64(t) {
            b
        } else {
            return Err(Error::InvalidKey(format!(
                "expected 64 hex digits or 44 base64 characters (a 32-byte key), found {} characters that are neither",
                t.chars().count()
            )));
        };
        let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            Error::InvalidKey(format!(
                "a key is 32 bytes; this one decodes to {} bytes",
                bytes.len()
            ))
        })?;
        Ok(MasterKey(arr))
    }

    /// A public fingerprint: tells a wrong key from a damaged archive.
    pub fn key_id(&self) -> [u8; 8] {
        let hk = Hkdf::<Sha256>::new(None, &self.0);
        let mut out = [0u8; 8];
        hk.expand(b"cairn-v1 key-id", &mut out)
            .expect("8 bytes is a valid HKDF length");
        out
    }

    pub fn key_id_hex(&self) -> String {
        crate::header::hex(&self.key_id())
    }

    /// The per-archive AES-256 key.
    pub fn payload_key(&self, salt: &[u8; 32], archive_id: &[u8; 16]) -> [u8; 32] {
        let hk = Hkdf::<Sha256>::new(Some(salt), &self.0);
        let mut info = Vec::with_capacity(32);
        info.extend_from_slice(b"cairn-v1 payload");
        info.extend_from_slice(archive_id);
        let mut out = [0u8; 32];
        hk.expand(&info, &mut out)
            .expect("32 bytes is a valid HKDF length");
        out
    }
}

/// What a reader was given to open an archive with.
#[derive(Clone, Debug)]
pub enum KeyMaterial {
    None,
    Key(MasterKey),
    Passphrase(String),
}

impl KeyMaterial {
    /// The master key for an archive whose header names `kdf`.
    pub fn master_for(&self, kdf: &Kdf) -> Result<MasterKey> {
        match (self, kdf) {
            (KeyMaterial::None, _) => Err(Error::KeyRequired),
            (KeyMaterial::Key(k), Kdf::RawKey) => Ok(k.clone()),
            (KeyMaterial::Passphrase(p), Kdf::Argon2id { .. }) => derive_from_passphrase(p, kdf),
            (KeyMaterial::Key(_), Kdf::Argon2id { .. }) => Err(Error::InvalidKey(
                "this archive was encrypted with a passphrase; give the passphrase, not a key"
                    .into(),
            )),
            (KeyMaterial::Passphrase(_), Kdf::RawKey) => Err(Error::InvalidKey(
                "this archive was encrypted with a 32-byte key; give the key, not a passphrase"
                    .into(),
            )),
        }
    }
}

pub(crate) fn check_argon2_params(m: u32, t: u32, p: u32) -> Result<()> {
    if !(8 * p..=ARGON2_MAX_M_COST_KIB).contains(&m)
        || !(1..=ARGON2_MAX_T_COST).contains(&t)
        || !(1..=ARGON2_MAX_P_COST).contains(&p)
    {
        return Err(Error::param(
            "Argon2id parameters",
            format!(
                "m={m} KiB, t={t}, p={p} are outside the accepted range (m ≤ {ARGON2_MAX_M_COST_KIB} KiB, t ≤ {ARGON2_MAX_T_COST}, p ≤ {ARGON2_MAX_P_COST})"
            ),
        ));
    }
    Ok(())
}

/// Stretches a passphrase into a master key with the Argon2id parameters and
/// salt of `kdf`.
pub fn derive_from_passphrase(passphrase: &str, kdf: &Kdf) -> Result<MasterKey> {
    let Kdf::Argon2id {
        m_cost_kib,
        t_cost,
        p_cost,
        salt,
    } = *kdf
    else {
        return Err(Error::param("key derivation", "not a passphrase archive"));
    };
    if passphrase.is_empty() {
        return Err(Error::InvalidKey("the passphrase is empty".into()));
    }
    check_argon2_params(m_cost_kib, t_cost, p_cost)?;
    let params = argon2::Params::new(m_cost_kib, t_cost, p_cost, Some(32))
        .map_err(|e| Error::param("Argon2id parameters", e.to_string()))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; 32];
    argon
        .hash_password_into(passphrase.as_bytes(), &salt, &mut out)
        .map_err(|e| Error::param("Argon2id", e.to_string()))?;
    Ok(MasterKey(out))
}

fn decode_hex(t: &str) -> Vec<u8> {
    let v = |c: u8| match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => c - b'A' + 10,
    };
    t.as_bytes()
        .chunks(2)
        .map(|p| (v(p[0]) << 4) | v(p[1]))
        .collect()
}

/// Standard base64 with padding (RFC 4648 §4); `None` if it is not that.
fn decode_base64(t: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let b = t.as_bytes();
    if b.is_empty() || !b.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(b.len() / 4 * 3);
    for (i, q) in b.chunks(4).enumerate() {
        let last = i == b.len() / 4 - 1;
        let pad = q.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &q[..4 - pad] {
            n = (n << 6) | val(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hex_and_base64_to_the_same_key() {
        let hex = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
        let b64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        assert_eq!(
            MasterKey::parse(hex).unwrap(),
            MasterKey::parse(b64).unwrap()
        );
        assert_eq!(MasterKey::parse(&format!("  {hex}\n")).unwrap().0[31], 31);
    }

    #[test]
    fn bad_keys_are_rejected_without_echoing_them() {
        let secret = "not-a-key-0123456789";
        let err = MasterKey::parse(secret).unwrap_err().to_string();
        assert!(!err.contains(secret), "{err}");
        assert!(err.contains("64 hex digits"), "{err}");
        let short = MasterKey::parse("AAECAw==").unwrap_err().to_string();
        assert!(short.contains("decodes to 4 bytes"), "{short}");
    }

    #[test]
    fn argon2_bounds_are_enforced() {
        let kdf = Kdf::Argon2id {
            m_cost_kib: 4 << 20,
            t_cost: 1,
            p_cost: 1,
            salt: [0; 16],
        };
        assert!(derive_from_passphrase("pw", &kdf).is_err());
    }
}
