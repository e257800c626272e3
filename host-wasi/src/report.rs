//! What a verification found, as text for people or JSON for the host.

use serde::Serialize;

pub use crate::checks::Table;

#[derive(Debug, Serialize)]
pub struct Failure {
    /// Where it failed: `key`, `read`, `decode`, `size` (decodes to more
    /// than --expect-size), `scratch` (the scratch file) or `sqlite`.
    pub stage: &'static str,
    /// For `decode`: the core's error code (`wrong-key`, `corrupt-chunk`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    pub message: String,
}

/// Fields are filled in as they are established; a failed check leaves the
/// rest empty.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub ok: bool,
    pub archive: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunks: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plain_len: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plain_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored_len: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored_sha256: Option<String>,
    /// `--host-digests`: `plain_sha256` is the trailer's claim and
    /// `stored_sha256` is absent; the host computes and compares both.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub digests_by_host: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_count: Option<u64>,
    /// `["ok"]`, or what integrity_check found (at most 100 lines).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub integrity: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub foreign_key_violations: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<Table>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Failure>,
}

impl Report {
    pub fn failed(
        archive: &str,
        stage: &'static str,
        code: Option<&'static str>,
        message: String,
    ) -> Report {
        Report {
            archive: archive.to_string(),
            ..Report::default()
        }
        .fail(stage, code, message)
    }

    pub fn fail(
        mut self,
        stage: &'static str,
        code: Option<&'static str>,
        message: String,
    ) -> Self {
        self.ok = false;
        self.error = Some(Failure {
            stage,
            code,
            message,
        });
        self
    }

    pub fn print(&self, json: bool) {
        if json {
            println!(
                "{}",
                serde_json::to_string(self).expect("a report always serializes")
            );
            return;
        }
        let mut lines = vec![format!("archive    {}", self.archive)];
        if let (Some(id), Some(db)) = (&self.archive_id, &self.db_name) {
            let created = self.created_at.as_deref().unwrap_or("?");
            lines.push(format!("identity   {id} of {db}, made {created}"));
        }
        if let (Some(chunks), Some(len), Some(sha)) =
            (self.chunks, self.plain_len, &self.plain_sha256)
        {
            let enc = self.encryption.as_deref().unwrap_or("?");
            lines.push(format!(
                "decoded    {chunks} chunks ({enc}), {len} bytes, sha256 {sha}"
            ));
        }
        if let (Some(size), Some(count)) = (self.page_size, self.page_count) {
            lines.push(format!("pages      {count} of {size} bytes"));
        }
        if !self.integrity.is_empty() {
            lines.push(format!("integrity  {}", self.integrity.join("; ")));
        }
        if let Some(n) = self.foreign_key_violations {
            lines.push(format!("foreign    {n} violations"));
        }
        for t in &self.tables {
            lines.push(format!("table      {} ({} rows)", t.name, t.rows));
        }
        println!("{}", lines.join("\n"));
        match &self.error {
            None => println!("ok"),
            Some(f) => eprintln!("error: {}", f.message),
        }
    }
}
