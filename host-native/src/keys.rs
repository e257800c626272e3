//! Where keys come from: a file or an environment variable, never the
//! command line (it would show in `ps`), and never echoed in messages.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use cairn_core::{KeyMaterial, MasterKey};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct KeyArgs {
    /// File holding a 32-byte key as 64 hex digits or base64 (see `cairn keygen`).
    #[arg(long, value_name = "PATH", group = "keysrc")]
    pub key_file: Option<PathBuf>,
    /// Name of an environment variable holding the key (hex or base64).
    #[arg(long, value_name = "NAME", group = "keysrc")]
    pub key_env: Option<String>,
    /// File whose first line is a passphrase (stretched with Argon2id).
    #[arg(long, value_name = "PATH", group = "keysrc")]
    pub passphrase_file: Option<PathBuf>,
    /// Name of an environment variable holding a passphrase.
    #[arg(long, value_name = "NAME", group = "keysrc")]
    pub passphrase_env: Option<String>,
}

impl KeyArgs {
    pub fn is_given(&self) -> bool {
        self.key_file.is_some()
            || self.key_env.is_some()
            || self.passphrase_file.is_some()
            || self.passphrase_env.is_some()
    }

    pub fn load(&self) -> Result<KeyMaterial> {
        if let Some(p) = &self.key_file {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read key file {}", p.display()))?;
            let key =
                MasterKey::parse(&text).with_context(|| format!("key file {}", p.display()))?;
            return Ok(KeyMaterial::Key(key));
        }
        if let Some(name) = &self.key_env {
            let text = env(name, "--key-env")?;
            let key =
                MasterKey::parse(&text).with_context(|| format!("environment variable {name}"))?;
            return Ok(KeyMaterial::Key(key));
        }
        if let Some(p) = &self.passphrase_file {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read passphrase file {}", p.display()))?;
            let line = text.lines().next().unwrap_or("").to_string();
            if line.is_empty() {
                bail!("passphrase file {} is empty", p.display());
            }
            return Ok(KeyMaterial::Passphrase(line));
        }
        if let Some(name) = &self.passphrase_env {
            let text = env(name, "--passphrase-env")?;
            if text.is_empty() {
                bail!("environment variable {name} (named by --passphrase-env) is empty");
            }
            return Ok(KeyMaterial::Passphrase(text));
        }
        Ok(KeyMaterial::None)
    }
}

fn env(name: &str, flag: &str) -> Result<String> {
    std::env::var(name)
        .map_err(|_| anyhow::anyhow!("environment variable {name} (named by {flag}) is not set"))
}
