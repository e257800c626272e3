// Shared by build.rs (through `include!`) and the library: a digest of every
// input of the embedded components, so a test can tell a stale embed.

/// SHA-256 over the paths and contents of the WIT files, the core's and the
/// verifier's (host-wasi) sources and manifests, and the lock file, in
/// sorted order.
pub fn component_source_hash(workspace: &std::path::Path) -> String {
    use sha2::{Digest, Sha256};
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&workspace.join("wit"), &mut files);
    walk(&workspace.join("core").join("src"), &mut files);
    walk(&workspace.join("host-wasi").join("src"), &mut files);
    files.push(workspace.join("core").join("Cargo.toml"));
    files.push(workspace.join("host-wasi").join("Cargo.toml"));
    files.push(workspace.join("Cargo.lock"));
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        let rel = f
            .strip_prefix(workspace)
            .unwrap_or(&f)
            .to_string_lossy()
            .replace('\\', "/");
        h.update(rel.as_bytes());
        h.update([0]);
        h.update(std::fs::read(&f).unwrap_or_default());
        h.update([0]);
    }
    hex::encode(h.finalize())
}
