//! The `cairn` binary against real remote stores on 127.0.0.1: s3s-fs and
//! moto (S3), OpenSSH sshd (SFTP), and a fault-injecting proxy in front of
//! S3. Round trips, fan-out, retries, concurrency, prune, pull, kills.

use std::process::Stdio;

use cairn_e2e::proxy::{Fault, FaultProxy};
use cairn_e2e::servers::{S3Server, SshServer};
use cairn_e2e::*;

/// A cairn command with a server's credentials and fast retries.
fn with_env(s: &Scratch, env: &[(String, String)], args: &[&str]) -> std::process::Command {
    let mut c = s.cmd(args);
    c.envs(env.iter().map(|(k, v)| (k, v)))
        .env("CAIRN_RETRY_BASE_MS", "20")
        .env("CAIRN_RETRY_ATTEMPTS", "5");
    c
}

fn run(s: &Scratch, env: &[(String, String)], args: &[&str]) -> Run {
    with_env(s, env, args).output().unwrap().into()
}

fn json(r: &Run) -> serde_json::Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

fn listed(s: &Scratch, env: &[(String, String)], dest: &str) -> Vec<String> {
    let r = run(s, env, &["list", dest, "--json"]).ok();
    json(&r)["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

/// Backup, list, restore, verify (streamed into the sandbox), prune: the
/// whole life of a destination on one store.
fn round_trip(s: &Scratch, env: &[(String, String)], dest: &str) {
    let a = json(
        &run(
            s,
            env,
            &["backup", "app.db", dest, "--json", "--key-file", "k"],
        )
        .ok(),
    );
    let b = json(
        &run(
            s,
            env,
            &["backup", "app.db", dest, "--json", "--key-file", "k"],
        )
        .ok(),
    );
    assert_eq!(a["destinations"][0]["ok"], true);
    assert_eq!(b["destinations"][0]["commit"], 2);
    assert_eq!(
        listed(s, env, dest),
        [a["id"].as_str().unwrap(), b["id"].as_str().unwrap()]
    );
    let out = format!("r-{}.db", a["id"].as_str().unwrap());
    run(s, env, &["restore", dest, "-o", &out, "--key-file", "k"]).ok();
    assert_eq!(count_rows(&s.path(&out)), 3000);
    let v = run(
        s,
        env,
        &["verify", dest, "--all", "--key-file", "k", "--json"],
    )
    .ok();
    let v = json(&v);
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .all(|r| r["ok"] == true && r["sandboxed"] == true),
        "{v}"
    );
    // --download-first takes the other path to the same result.
    run(
        s,
        env,
        &["verify", dest, "--key-file", "k", "--download-first"],
    )
    .ok();
    let p = json(&run(s, env, &["prune", dest, "--keep-last", "1", "--json"]).ok());
    assert_eq!(
        (p["kept"].clone(), p["removed"].clone()),
        (1.into(), 1.into())
    );
    assert_eq!(listed(s, env, dest), [b["id"].as_str().unwrap()]);
    run(
        s,
        env,
        &[
            "restore",
            dest,
            "-o",
            "after-prune.db",
            "--key-file",
            "k",
            "--force",
        ],
    )
    .ok();
}

fn scratch() -> Scratch {
    let s = Scratch::new();
    s.make_db("app.db", 3000);
    s.run(&["keygen", "-o", "k"]).ok();
    s
}

#[test]
fn s3s_fs_round_trip() {
    let srv = S3Server::s3s_fs();
    round_trip(&scratch(), &srv.env(), &srv.url("app/prod"));
}

#[test]
fn moto_round_trip() {
    let Some(srv) = S3Server::moto() else { return };
    round_trip(&scratch(), &srv.env(), &srv.url("p"));
}

#[test]
fn sftp_round_trip() {
    let Some(srv) = SshServer::start() else {
        return;
    };
    round_trip(&scratch(), &[], &srv.url("backups"));
}

#[test]
fn fan_out_writes_one_encode_everywhere_and_survives_a_dead_destination() {
    let s3 = S3Server::s3s_fs();
    let Some(ssh) = SshServer::start() else {
        return;
    };
    let s = scratch();
    let env = s3.env();
    let (a, b) = (s3.url("fan"), ssh.url("fan"));
    let r = json(&run(&s, &env, &["backup", "app.db", "local", &a, &b, "--json"]).ok());
    let d = r["destinations"].as_array().unwrap();
    assert_eq!(d.len(), 3);
    assert!(d.iter().all(|x| x["ok"] == true), "{r}");
    // The same archive (same id and bytes) in each.
    for dest in ["local", &a, &b] {
        assert_eq!(listed(&s, &env, dest), [r["id"].as_str().unwrap()]);
    }
    // One destination down: the others succeed, the exit status says so.
    let dead = "s3://nobucket/x?endpoint=http://127.0.0.1:9&path_style=true&region=us-east-1";
    let r = run(&s, &env, &["backup", "app.db", "local", dead, &b, "--json"]);
    assert_ne!(r.code, 0);
    let v = json(&r);
    let d = v["destinations"].as_array().unwrap();
    assert_eq!(d.iter().filter(|x| x["ok"] == true).count(), 2, "{v}");
    assert!(
        d[1]["error"].as_str().unwrap().contains("127.0.0.1:9"),
        "{v}"
    );
    assert!(
        r.stderr.contains("1 of 3 destinations failed"),
        "{}",
        r.stderr
    );
    assert_eq!(listed(&s, &env, "local").len(), 2);
    assert_eq!(listed(&s, &env, &b).len(), 2);
}

#[test]
fn four_concurrent_backups_into_one_s3_prefix_are_all_listed() {
    let Some(srv) = S3Server::moto() else { return };
    let s = scratch();
    let env = srv.env();
    let dest = srv.url("shared");
    let kids: Vec<_> = (0..4)
        .map(|_| {
            with_env(&s, &env, &["backup", "app.db", &dest, "--json", "-q"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut made: Vec<String> = kids
        .into_iter()
        .map(|k| {
            let r = Run::from(k.wait_with_output().unwrap()).ok();
            json(&r)["id"].as_str().unwrap().to_string()
        })
        .collect();
    made.sort();
    let mut got = listed(&s, &env, &dest);
    got.sort();
    assert_eq!(got, made);
    for id in &made {
        run(
            &s,
            &env,
            &["restore", &dest, "--id", id, "-o", &format!("{id}.db")],
        )
        .ok();
    }
}

#[test]
fn retries_ride_out_faults_and_give_a_clear_error_when_they_cannot() {
    let srv = S3Server::s3s_fs();
    let proxy = FaultProxy::start(srv.addr());
    let s = scratch();
    let env = srv.env();
    let dest = srv.url_via(&proxy, "faulty");
    // A 503, a reset and a slow answer on the first requests: all retried.
    proxy.inject(Some("PUT"), None, Fault::Status(503), 2);
    proxy.inject(Some("GET"), None, Fault::Reset, 1);
    proxy.inject(
        None,
        None,
        Fault::Delay(std::time::Duration::from_millis(300)),
        2,
    );
    let r = json(&run(&s, &env, &["backup", "app.db", &dest, "--json"]).ok());
    assert_eq!(r["destinations"][0]["ok"], true);
    run(&s, &env, &["restore", &dest, "-o", "r.db"]).ok();
    // A multipart upload whose part is cut mid-body is resumed, not restarted.
    let big = Scratch::new();
    big.make_db("app.db", 120_000);
    proxy.clear_requests();
    proxy.inject(Some("PUT"), Some("partNumber=2"), Fault::CutMidBody, 1);
    let dest2 = format!("{}&part_size=5", srv.url_via(&proxy, "mpu"));
    let r = json(
        &run(
            &big,
            &env,
            &["backup", "app.db", &dest2, "--json", "--level", "0"],
        )
        .ok(),
    );
    assert_eq!(r["destinations"][0]["ok"], true);
    let part1 = proxy
        .requests()
        .iter()
        .filter(|(m, p)| m == "PUT" && p.contains("partNumber=1&"))
        .count();
    assert_eq!(part1, 1, "part 1 was sent once: {:?}", proxy.requests());
    run(&big, &env, &["restore", &dest2, "-o", "big.db"]).ok();
    // Faults that do not stop: a clear error after the tries, nothing listed.
    proxy.inject(Some("PUT"), None, Fault::Status(503), 1000);
    let r = run(&s, &env, &["backup", "app.db", &dest]);
    r.fails_with(&["503", "tries"]);
    proxy.clear();
    assert_eq!(listed(&s, &env, &dest).len(), 1);
}

#[test]
fn wrong_credentials_and_unknown_hosts_are_refused_clearly() {
    let srv = S3Server::s3s_fs();
    let s = scratch();
    let mut env = srv.env();
    for (k, v) in env.iter_mut() {
        if k == "AWS_SECRET_ACCESS_KEY" {
            *v = "wrong".into();
        }
    }
    run(&s, &env, &["backup", "app.db", &srv.url("x")])
        .fails_with(&["credentials", "AWS_SECRET_ACCESS_KEY"]);
    run(&s, &env, &["list", &srv.url("x")]).fails_with(&["credentials"]);
    let Some(ssh) = SshServer::start() else {
        return;
    };
    let url = ssh.url("x");
    // The same server, but known_hosts does not list it.
    let empty = s.path("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let base = url.split("&known_hosts=").next().unwrap();
    let bad = format!("{base}&known_hosts={}", empty.display());
    run(&s, &[], &["backup", "app.db", &bad]).fails_with(&["known_hosts", "ssh-keyscan"]);
}

#[test]
fn sigkill_during_an_upload_leaves_nothing_visible_and_the_next_run_is_clean() {
    let Some(srv) = S3Server::moto() else { return };
    let proxy = FaultProxy::start(srv.addr());
    let s = Scratch::new();
    s.make_db("app.db", 120_000);
    let env = srv.env();
    let dest = format!("{}&part_size=5", srv.url_via(&proxy, "killed"));
    run(&s, &env, &["backup", "app.db", &dest, "--level", "0"]).ok();
    // Slow every part so the kill lands mid-upload.
    proxy.inject(
        Some("PUT"),
        Some("partNumber"),
        Fault::Delay(std::time::Duration::from_secs(3)),
        100,
    );
    let mut child = with_env(&s, &env, &["backup", "app.db", &dest, "--level", "0", "-q"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    child.kill().unwrap();
    child.wait().unwrap();
    proxy.clear();
    assert_eq!(
        listed(&s, &env, &dest).len(),
        1,
        "the killed backup is not listed"
    );
    run(&s, &env, &["restore", &dest, "-o", "r.db"]).ok();
    run(&s, &env, &["backup", "app.db", &dest, "--level", "0"]).ok();
    assert_eq!(listed(&s, &env, &dest).len(), 2);
    // prune aborts the abandoned multipart upload once it is old enough;
    // here it is fresh, so it must still be left alone.
    run(&s, &env, &["prune", &dest, "--keep-last", "5"]).ok();
}

#[test]
fn pull_over_sftp_twice_downloads_once() {
    let Some(ssh) = SshServer::start() else {
        return;
    };
    let s = scratch();
    let dest = ssh.url("srv");
    run(&s, &[], &["backup", "app.db", &dest, "--key-file", "k"]).ok();
    let a = json(
        &run(
            &s,
            &[],
            &["pull", &dest, "laptop", "--key-file", "k", "--json"],
        )
        .ok(),
    );
    assert_eq!(a["pulled"], 1);
    let b = json(
        &run(
            &s,
            &[],
            &["pull", &dest, "laptop", "--key-file", "k", "--json"],
        )
        .ok(),
    );
    assert_eq!(
        (b["pulled"].clone(), b["skipped"].clone()),
        (0.into(), 1.into())
    );
    run(
        &s,
        &[],
        &["restore", "laptop", "-o", "r.db", "--key-file", "k"],
    )
    .ok();
    // Without the key an encrypted backup cannot be checked: not kept.
    run(&s, &[], &["backup", "app.db", &dest, "--key-file", "k"]).ok();
    run(&s, &[], &["pull", &dest, "laptop2"]).fails_with(&["could not be pulled"]);
    assert!(s.files("laptop2/snapshots").is_empty());
}

#[test]
fn a_layout_1_directory_pushed_to_sftp_is_read_and_extended() {
    // Layout 1 was local-only; a copy of one on a server must still work.
    let Some(ssh) = SshServer::start() else {
        return;
    };
    let s = scratch();
    s.run(&["backup", "app.db", "v1"]).ok();
    let entries: Vec<cairn_core::catalog::Entry> =
        serde_json::from_value(s.catalog("v1")["entries"].clone()).unwrap();
    let root = ssh.root.join("v1");
    std::fs::create_dir_all(root.join("snapshots")).unwrap();
    for e in &entries {
        std::fs::copy(s.path(&format!("v1/{}", e.object)), root.join(&e.object)).unwrap();
    }
    let cat = cairn_core::catalog::Catalog {
        generation: 1,
        entries,
    };
    std::fs::write(root.join("catalog.json"), cat.render()).unwrap();
    let dest = ssh.url("v1");
    assert_eq!(listed(&s, &[], &dest).len(), 1);
    run(&s, &[], &["backup", "app.db", &dest]).ok();
    assert_eq!(listed(&s, &[], &dest).len(), 2);
    assert!(root.join("cairn.json").exists());
}
