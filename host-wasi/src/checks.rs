//! What SQLite is asked about a restored database. Shared as source by
//! cairn-wasi and by `cairn verify --no-sandbox` (host-native includes this
//! file), so that both judge a database by the same checks.

use rusqlite::Connection;

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Table {
    pub name: String,
    pub rows: u64,
}

/// Filled in as the checks run; a failed check leaves the rest empty.
#[derive(Debug, Clone, Default)]
pub struct Findings {
    pub page_size: Option<u64>,
    pub page_count: Option<u64>,
    /// `["ok"]`, or what integrity_check found (at most 100 lines).
    pub integrity: Vec<String>,
    pub foreign_key_violations: Option<u64>,
    pub tables: Vec<Table>,
}

/// `PRAGMA integrity_check`, then `foreign_key_check`, then a row count of
/// every table. Errors name the check that failed.
pub fn run(conn: &Connection, f: &mut Findings) -> Result<(), String> {
    f.page_size = Some(count(conn, "PRAGMA page_size")?);
    f.page_count = Some(count(conn, "PRAGMA page_count")?);
    f.integrity = rows(conn, "PRAGMA integrity_check(100)")?;
    if f.integrity != ["ok"] {
        return Err(format!(
            "PRAGMA integrity_check failed: {}",
            f.integrity.join("; ")
        ));
    }
    let violations = count(conn, "SELECT count(*) FROM pragma_foreign_key_check")?;
    f.foreign_key_violations = Some(violations);
    for name in rows(
        conn,
        "SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name",
    )? {
        let sql = format!("SELECT count(*) FROM \"{}\"", name.replace('"', "\"\""));
        let rows = count(conn, &sql)?;
        f.tables.push(Table { name, rows });
    }
    if violations > 0 {
        return Err(format!(
            "PRAGMA foreign_key_check found {violations} rows whose parent row is missing"
        ));
    }
    Ok(())
}

fn rows(conn: &Connection, sql: &str) -> Result<Vec<String>, String> {
    let run = || -> rusqlite::Result<Vec<String>> {
        let mut stmt = conn.prepare(sql)?;
        stmt.query_map([], |r| r.get::<_, String>(0))?.collect()
    };
    run().map_err(|e| format!("SQLite: {sql}: {e}"))
}

fn count(conn: &Connection, sql: &str) -> Result<u64, String> {
    conn.query_row(sql, [], |r| r.get::<_, i64>(0))
        .map(|n| n as u64)
        .map_err(|e| format!("SQLite: {sql}: {e}"))
}
