//! The daemon (`cairn daemon`, `run-once`, `status`, `config check`) with
//! real peers on 127.0.0.1: an SMTP server that records mail (aiosmtpd), an
//! HTTP sink that records webhook bodies, s3s-fs behind a fault proxy.

use std::io::Read;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use cairn_e2e::proxy::{Fault, FaultProxy};
use cairn_e2e::servers::{S3Server, SmtpSink};
use cairn_e2e::sinks::{BlackHole, HttpSink};
use cairn_e2e::*;

/// Polls `f` until it is true; panics with `what` after `limit`.
fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run_env(s: &Scratch, env: &[(String, String)], args: &[&str]) -> Run {
    s.cmd(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("CAIRN_RETRY_BASE_MS", "20")
        .env("CAIRN_RETRY_ATTEMPTS", "2")
        .output()
        .unwrap()
        .into()
}

fn listed(s: &Scratch, env: &[(String, String)], dest: &str) -> Vec<serde_json::Value> {
    let r = run_env(s, env, &["list", dest, "--json"]);
    if r.code != 0 {
        return vec![];
    }
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    v["backups"].as_array().cloned().unwrap_or_default()
}

/// A running `cairn daemon`, its log in a file; killed if still running when dropped.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(s: &Scratch, env: &[(String, String)]) -> Daemon {
        let log = s.path("daemon.log");
        let f = std::fs::File::create(&log).unwrap();
        let child = s
            .cmd(&["daemon", "-c", "cairn.toml"])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("CAIRN_RETRY_BASE_MS", "20")
            .env("CAIRN_RETRY_ATTEMPTS", "2")
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .unwrap();
        Daemon { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a child we have not reaped.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for the exit; its code.
    fn wait(&mut self, limit: Duration) -> i32 {
        let end = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < end,
                "the daemon did not exit within {limit:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(s: &Scratch, text: &str) {
    std::fs::write(s.path("cairn.toml"), text).unwrap();
}

/// Webhook bodies for `database` with `status`.
fn hooks(h: &HttpSink, database: &str, status: &str) -> Vec<serde_json::Value> {
    h.requests()
        .iter()
        .map(|r| r.json())
        .filter(|j| j["database"] == database && j["status"] == status)
        .collect()
}

#[test]
fn interval_daemon_backs_up_two_databases_to_two_destinations_prunes_and_notifies() {
    let srv = S3Server::s3s_fs();
    let Some(smtp) = SmtpSink::start() else {
        return;
    };
    let hook = HttpSink::start(200);
    let s = Scratch::new();
    s.make_db("a.db", 500);
    s.make_db("b.db", 800);
    let s3a = srv.url("daemon/a");
    let s3b = srv.url("daemon/b");
    write_config(
        &s,
        &format!(
            r#"
[daemon]
state_dir = "state"
max_parallel = 2
[notifications.mail]
type = "email"
on = "both"
host = "127.0.0.1"
port = {}
tls = "none"
from = "cairn <cairn@example.com>"
to = ["ops@example.com"]
[notifications.hook]
type = "webhook"
on = ["success", "failure"]
url = "{}"
headers = {{ Authorization = "Bearer ${{HOOK_TOKEN}}" }}
[[databases]]
name = "a"
source = "a.db"
destinations = ["backups/a", "{s3a}"]
schedule = {{ every = "1s" }}
retention = {{ keep_last = 2 }}
[[databases]]
name = "b"
source = "b.db"
destinations = ["backups/b", "{s3b}"]
schedule = {{ every = "1s" }}
retention = {{ keep_last = 2 }}
"#,
            smtp.port,
            hook.url("/hook")
        ),
    );
    let mut env = srv.env();
    env.push(("HOOK_TOKEN".into(), "t0k3n".into()));
    let mut d = Daemon::start(&s, &env);
    wait_for(
        "three successful runs of each database",
        Duration::from_secs(90),
        || hooks(&hook, "a", "success").len() >= 3 && hooks(&hook, "b", "success").len() >= 3,
    );
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(60)), 0, "{}", d.log());
    // Pruned to the two newest in each of the four destinations.
    for dest in ["backups/a", "backups/b", &s3a, &s3b] {
        let n = listed(&s, &env, dest).len();
        assert_eq!(n, 2, "{dest} holds {n} backups after keep_last = 2");
    }
    let ok = hooks(&hook, "a", "success");
    let j = &ok[0];
    assert_eq!(j["schema"], "cairn.notification.v1");
    assert_eq!(j["event"], "backup");
    assert_eq!(j["destinations"].as_array().unwrap().len(), 2);
    assert!(j["bytes"].as_u64().unwrap() > 0);
    assert!(j["backup_id"].is_string() && j["host"].is_string() && j["time"].is_string());
    let req = &hook.requests()[0];
    assert_eq!(req.header("authorization"), Some("Bearer t0k3n"));
    assert_eq!(req.method, "POST");
    // Every run mailed (on = "both"), and nothing failed.
    let mails = smtp.messages();
    assert!(mails.len() >= 6, "{} mails", mails.len());
    assert!(
        mails
            .iter()
            .any(|m| m.contains("Subject: cairn: backup of a succeeded"))
    );
    assert!(!mails.iter().any(|m| m.contains("FAILED")));
    assert!(hooks(&hook, "a", "failure").is_empty() && hooks(&hook, "b", "failure").is_empty());
    // The secret header never reached the log.
    assert!(!d.log().contains("t0k3n"));
    // status reads the destinations.
    let st: serde_json::Value = serde_json::from_str(
        &run_env(&s, &env, &["status", "-c", "cairn.toml", "--json"])
            .ok()
            .stdout,
    )
    .unwrap();
    for db in st.as_array().unwrap() {
        assert!(db["last_success"]["time"].is_string(), "{db}");
        for dest in db["destinations"].as_array().unwrap() {
            assert!(
                dest["newest"]["stored_size"].as_u64().unwrap() > 0,
                "{dest}"
            );
        }
    }
}

/// A database backed up to S3 through a proxy that holds each archive
/// upload for `delay`: runs that take as long as we need.
fn slow_s3(srv: &S3Server, proxy: &FaultProxy, prefix: &str, delay: Duration) -> String {
    proxy.inject(Some("PUT"), Some("snapshots/"), Fault::Delay(delay), 1000);
    srv.url_via(proxy, prefix)
}

#[test]
fn sigterm_mid_run_aborts_after_the_grace_period_publishes_nothing_and_exits_0() {
    let srv = S3Server::s3s_fs();
    let proxy = FaultProxy::start(srv.addr());
    let hook = HttpSink::start(200);
    let s = Scratch::new();
    s.make_db("app.db", 2000);
    let dest = slow_s3(&srv, &proxy, "term", Duration::from_secs(20));
    write_config(
        &s,
        &format!(
            r#"
[daemon]
state_dir = "state"
shutdown_grace = "1s"
[notifications.hook]
type = "webhook"
url = "{}"
[[databases]]
name = "app"
source = "app.db"
destinations = ["{dest}"]
schedule = {{ every = "1h" }}
"#,
            hook.url("/")
        ),
    );
    let env = srv.env();
    let mut d = Daemon::start(&s, &env);
    wait_for("the archive upload", Duration::from_secs(30), || {
        proxy
            .requests()
            .iter()
            .any(|(m, p)| m == "PUT" && p.contains("snapshots/"))
    });
    let t = Instant::now();
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(30)), 0, "{}", d.log());
    assert!(
        t.elapsed() < Duration::from_secs(18),
        "it waited for the upload"
    );
    proxy.clear();
    assert!(
        listed(&s, &env, &srv.url("term")).is_empty(),
        "a stopped backup must not be listed"
    );
    let log = d.log();
    assert!(log.contains("grace period over"), "{log}");
    let fails = hooks(&hook, "app", "failure");
    assert_eq!(fails.len(), 1, "{:?}", hook.requests());
    assert!(
        fails[0]["error"]
            .as_str()
            .unwrap()
            .contains("stopped at shutdown")
    );
}

#[test]
fn sigterm_lets_a_run_finish_within_the_grace_period() {
    let srv = S3Server::s3s_fs();
    let proxy = FaultProxy::start(srv.addr());
    let s = Scratch::new();
    s.make_db("app.db", 500);
    let dest = slow_s3(&srv, &proxy, "grace", Duration::from_secs(2));
    write_config(
        &s,
        &format!(
            "[daemon]\nstate_dir = \"state\"\nshutdown_grace = \"60s\"\n[[databases]]\nname = \"app\"\nsource = \"app.db\"\ndestinations = [\"{dest}\"]\nschedule = {{ every = \"1h\" }}\n"
        ),
    );
    let env = srv.env();
    let mut d = Daemon::start(&s, &env);
    wait_for("the archive upload", Duration::from_secs(30), || {
        proxy
            .requests()
            .iter()
            .any(|(m, p)| m == "PUT" && p.contains("snapshots/"))
    });
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(60)), 0, "{}", d.log());
    proxy.clear();
    assert_eq!(listed(&s, &env, &srv.url("grace")).len(), 1, "{}", d.log());
}

#[test]
fn a_failing_destination_sends_exactly_one_mail_and_one_webhook() {
    let Some(smtp) = SmtpSink::start() else {
        return;
    };
    let hook = HttpSink::start(200);
    let s = Scratch::new();
    s.make_db("app.db", 300);
    std::fs::write(s.path("not-a-dir"), "x").unwrap();
    write_config(
        &s,
        &format!(
            r#"
[daemon]
state_dir = "state"
[notifications.mail]
type = "email"
host = "127.0.0.1"
port = {}
tls = "none"
from = "cairn@example.com"
to = ["ops@example.com"]
[notifications.hook]
type = "webhook"
url = "{}"
[[databases]]
name = "app"
source = "app.db"
destinations = ["backups", "not-a-dir/backups"]
schedule = {{ cron = "0 3 * * *" }}
"#,
            smtp.port,
            hook.url("/h")
        ),
    );
    let r = s.run(&["run-once", "-c", "cairn.toml"]);
    assert_ne!(r.code, 0);
    assert!(r.stdout.contains("FAILED  app"), "{}", r.stdout);
    // Delivered before run-once returns.
    let reqs = hook.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    let j = reqs[0].json();
    assert_eq!(j["status"], "failure");
    let dests = j["destinations"].as_array().unwrap();
    assert_eq!(dests[0]["ok"], true);
    assert_eq!(dests[1]["ok"], false);
    assert!(
        dests[1]["destination"]
            .as_str()
            .unwrap()
            .ends_with("not-a-dir/backups")
    );
    let mails = smtp.messages();
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert!(
        mails[0].contains("Subject: cairn: backup of app FAILED"),
        "{}",
        mails[0]
    );
    assert!(mails[0].contains("not-a-dir"), "{}", mails[0]);
    // The good destination still got its backup.
    assert_eq!(listed(&s, &[], "backups").len(), 1);
    let st: serde_json::Value =
        serde_json::from_str(&s.run(&["status", "-c", "cairn.toml", "--json"]).ok().stdout)
            .unwrap();
    assert!(
        st[0]["last_failure"]["error"]
            .as_str()
            .unwrap()
            .contains("not-a-dir")
    );
}

#[test]
fn a_run_past_its_timeout_is_stopped_and_notified() {
    let srv = S3Server::s3s_fs();
    let proxy = FaultProxy::start(srv.addr());
    let hook = HttpSink::start(200);
    let s = Scratch::new();
    s.make_db("app.db", 500);
    let dest = slow_s3(&srv, &proxy, "timeout", Duration::from_secs(20));
    write_config(
        &s,
        &format!(
            "[daemon]\nstate_dir = \"state\"\n[notifications.hook]\ntype = \"webhook\"\nurl = \"{}\"\n[[databases]]\nname = \"app\"\nsource = \"app.db\"\ndestinations = [\"{dest}\"]\nschedule = {{ every = \"1h\" }}\ntimeout = \"3s\"\n",
            hook.url("/")
        ),
    );
    let env = srv.env();
    let t = Instant::now();
    let r = run_env(&s, &env, &["run-once", "-c", "cairn.toml"]);
    assert_ne!(r.code, 0);
    assert!(
        t.elapsed() < Duration::from_secs(18),
        "the timeout did not stop the run"
    );
    assert!(r.stdout.contains("timed out after 3s"), "{}", r.stdout);
    proxy.clear();
    assert!(listed(&s, &env, &srv.url("timeout")).is_empty());
    let fails = hooks(&hook, "app", "failure");
    assert_eq!(fails.len(), 1);
    assert!(fails[0]["error"].as_str().unwrap().contains("timed out"));
}

#[test]
fn a_dead_webhook_does_not_delay_the_next_run() {
    let hole = BlackHole::start();
    let s = Scratch::new();
    s.make_db("app.db", 200);
    write_config(
        &s,
        &format!(
            "[daemon]\nstate_dir = \"state\"\n[notifications.dead]\ntype = \"webhook\"\non = \"both\"\nurl = \"{}\"\ntimeout = \"60s\"\nretries = 3\n[[databases]]\nname = \"app\"\nsource = \"app.db\"\ndestinations = [\"backups\"]\nschedule = {{ every = \"1s\" }}\n",
            hole.url()
        ),
    );
    let mut d = Daemon::start(&s, &[]);
    // The first notification hangs for a minute; backups go on meanwhile.
    wait_for(
        "four backups despite a hanging webhook",
        Duration::from_secs(20),
        || listed(&s, &[], "backups").len() >= 4,
    );
    d.signal(libc::SIGTERM);
    // Exit waits for pending deliveries at most 15 s.
    assert_eq!(d.wait(Duration::from_secs(40)), 0, "{}", d.log());
}

#[test]
fn every_problem_in_a_broken_config_is_reported_with_its_path() {
    let s = Scratch::new();
    s.make_db("app.db", 10);
    std::fs::write(s.path("open.key"), "00".repeat(32)).unwrap();
    write_config(
        &s,
        r#"
typo = 1
[daemon]
log_format = "xml"
[notifications.mail]
type = "email"
host = "smtp.example.com"
username = "u"
to = []
[[databases]]
name = "app"
source = "app.db"
destinations = ["/tmp/x", "s4://bucket/x"]
schedule = { cron = "0 3 * *" }
key_file = "open.key"
retention = { keep_daily = 7, max_age = "forever" }
[[databases]]
name = "app"
source = "missing.db"
destinations = ["s3://${CAIRN_TEST_NO_SUCH_VAR}/x"]
schedule = { every = "1h" }
notify = ["pager"]
"#,
    );
    std::fs::set_permissions(
        s.path("open.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let r = s.run(&["config", "check", "-c", "cairn.toml"]);
    assert_ne!(r.code, 0);
    let expected = [
        "typo: unknown key",
        "daemon.log_format: \"xml\" is not a format",
        "notifications.mail.password: missing",
        "notifications.mail.from: missing",
        "notifications.mail.to: is empty",
        "databases[0].destinations[1]: destination s4://bucket/x: unknown scheme \"s4\"",
        "databases[0].schedule.cron: \"0 3 * *\" has 4 fields",
        "databases[0].key_file: ",
        "has mode 0644",
        "databases[0].retention.max_age: \"forever\" is not a duration",
        "databases[1].name: \"app\" is already the name of databases[0]",
        "databases[1].source: ",
        "databases[1].destinations[0]: environment variable CAIRN_TEST_NO_SUCH_VAR is not set",
        "databases[1].notify[0]: no notification route named \"pager\"",
    ];
    for e in expected {
        assert!(r.stderr.contains(e), "missing {e:?} in:\n{}", r.stderr);
    }
    assert!(r.stderr.contains(" problems:"), "{}", r.stderr);
    // --json: the same list, machine-readable.
    let j: serde_json::Value = serde_json::from_str(
        &s.run(&["config", "check", "-c", "cairn.toml", "--json"])
            .stdout,
    )
    .unwrap();
    assert_eq!(j["ok"], false);
    assert!(j["problems"].as_array().unwrap().len() >= expected.len() - 1);
    // The daemon refuses to start with the same report.
    let r = s.run(&["daemon", "-c", "cairn.toml"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("databases[0].destinations[1]"),
        "{}",
        r.stderr
    );
    // A good config passes, and --connect reaches its destination.
    write_config(
        &s,
        "[[databases]]\nname = \"app\"\nsource = \"app.db\"\ndestinations = [\"backups\"]\nschedule = { every = \"1h\" }\n",
    );
    s.run(&["config", "check", "-c", "cairn.toml"]).ok();
    std::fs::create_dir_all(s.path("backups")).unwrap();
    s.run(&["config", "check", "-c", "cairn.toml", "--connect"])
        .ok();
}

#[test]
fn sighup_with_a_broken_config_keeps_the_old_one() {
    let s = Scratch::new();
    s.make_db("a.db", 100);
    s.make_db("b.db", 100);
    let good = "[daemon]\nstate_dir = \"state\"\n[[databases]]\nname = \"a\"\nsource = \"a.db\"\ndestinations = [\"backups/a\"]\nschedule = { every = \"1s\" }\n";
    write_config(&s, good);
    let mut d = Daemon::start(&s, &[]);
    wait_for("a first backup", Duration::from_secs(20), || {
        !listed(&s, &[], "backups/a").is_empty()
    });
    write_config(
        &s,
        "[[databases]]\nname = \"a\"\nsource = \"a.db\"\ndestinations = [\"s4://x\"]\nschedule = { every = \"1s\" }\n",
    );
    d.signal(libc::SIGHUP);
    wait_for("the reload to be refused", Duration::from_secs(10), || {
        d.log().contains("keeping the running one")
    });
    assert!(d.log().contains("unknown scheme \"s4\""), "{}", d.log());
    let n = listed(&s, &[], "backups/a").len();
    wait_for(
        "backups to go on under the old config",
        Duration::from_secs(20),
        || listed(&s, &[], "backups/a").len() >= n + 2,
    );
    // A valid new config is taken: database b appears.
    write_config(
        &s,
        &format!(
            "{good}[[databases]]\nname = \"b\"\nsource = \"b.db\"\ndestinations = [\"backups/b\"]\nschedule = {{ every = \"1s\" }}\n"
        ),
    );
    d.signal(libc::SIGHUP);
    wait_for(
        "a backup of the new database",
        Duration::from_secs(20),
        || !listed(&s, &[], "backups/b").is_empty(),
    );
    d.signal(libc::SIGINT);
    assert_eq!(d.wait(Duration::from_secs(30)), 0, "{}", d.log());
}

#[test]
fn a_drill_catches_an_archive_corrupted_on_the_destination() {
    let hook = HttpSink::start(200);
    let s = Scratch::new();
    s.make_db("app.db", 3000);
    write_config(
        &s,
        &format!(
            "[daemon]\nstate_dir = \"state\"\n[notifications.hook]\ntype = \"webhook\"\non = \"both\"\nurl = \"{}\"\n[[databases]]\nname = \"app\"\nsource = \"app.db\"\ndestinations = [\"backups\", \"copy\"]\nschedule = {{ every = \"1h\" }}\nverify = {{ every = \"7d\" }}\n",
            hook.url("/")
        ),
    );
    s.run(&["run-once", "-c", "cairn.toml"]).ok();
    s.run(&["run-once", "-c", "cairn.toml", "--verify"]).ok();
    let drills: Vec<_> = hook
        .requests()
        .iter()
        .map(|r| r.json())
        .filter(|j| j["event"] == "drill")
        .collect();
    assert_eq!(drills.len(), 1);
    assert_eq!(drills[0]["status"], "success");
    // Flip bytes in the middle of the archive in one destination.
    let obj = s.latest_object("backups");
    let p = s.path(&format!("backups/{obj}"));
    let mut bytes = std::fs::read(&p).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0x5a;
    }
    std::fs::write(&p, bytes).unwrap();
    let r = s.run(&["run-once", "-c", "cairn.toml", "--verify"]);
    assert_ne!(r.code, 0, "{}", r.stdout);
    let drills: Vec<_> = hook
        .requests()
        .iter()
        .map(|r| r.json())
        .filter(|j| j["event"] == "drill")
        .collect();
    assert_eq!(drills.len(), 2);
    let last = &drills[1];
    assert_eq!(last["status"], "failure");
    let dests = last["destinations"].as_array().unwrap();
    assert_eq!(dests[0]["ok"], false, "{last}");
    assert_eq!(dests[1]["ok"], true, "{last}");
    // status: the corrupted destination failed since its last pass; the copy passed.
    let st: serde_json::Value =
        serde_json::from_str(&s.run(&["status", "-c", "cairn.toml", "--json"]).ok().stdout)
            .unwrap();
    let d0 = &st[0]["destinations"][0];
    let d1 = &st[0]["destinations"][1];
    assert!(
        d0["last_drill_pass"].is_string() && d0["last_drill_failure"].is_string(),
        "{d0}"
    );
    assert!(d0["last_drill_error"].is_string(), "{d0}");
    assert!(
        d1["last_drill_pass"].is_string() && d1["last_drill_failure"].is_null(),
        "{d1}"
    );
    let text = s.run(&["status", "-c", "cairn.toml"]).ok().stdout;
    assert!(text.contains("FAILED since"), "{text}");
}

/// `name{labels} value` or `name value`, as the text format has it.
fn parse_sample(line: &str) -> Option<(String, f64)> {
    let (name_labels, value) = line.rsplit_once(' ')?;
    let name = name_labels.split('{').next()?;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return None;
    }
    if name_labels.contains('{') && !name_labels.ends_with('}') {
        return None;
    }
    let v = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name_labels.to_string(), v))
}

#[test]
fn missed_runs_run_once_at_start_up_and_metrics_parse_as_prometheus_text() {
    let s = Scratch::new();
    s.make_db("app.db", 100);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    write_config(
        &s,
        &format!(
            "[daemon]\nstate_dir = \"state\"\nmetrics_listen = \"127.0.0.1:{port}\"\n[[databases]]\nname = \"app\"\nsource = \"app.db\"\ndestinations = [\"backups\"]\nschedule = {{ cron = \"0 3 * * *\" }}\n"
        ),
    );
    // A run recorded two days ago: the 03:00 slot since then was missed.
    std::fs::create_dir_all(s.path("state")).unwrap();
    let two_days_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 2 * 86_400_000;
    std::fs::write(
        s.path("state/state.json"),
        format!("{{\"databases\": {{\"app\": {{\"last_start_ms\": {two_days_ago}}}}}}}"),
    )
    .unwrap();
    let mut d = Daemon::start(&s, &[]);
    wait_for("the missed run", Duration::from_secs(20), || {
        listed(&s, &[], "backups").len() == 1
    });
    let get = || -> String {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        std::io::Write::write_all(&mut c, b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        out
    };
    wait_for("the run in the metrics", Duration::from_secs(10), || {
        get().contains("cairn_backup_runs_total{database=\"app\",status=\"success\"} 1")
    });
    let resp = get();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    let mut samples = 0;
    for line in body.lines() {
        if line.starts_with('#') || line.is_empty() {
            assert!(
                line.is_empty()
                    || line.starts_with("# HELP ")
                    || line.starts_with("# TYPE ")
                    || line.starts_with("# UNIT ")
                    || line == "# EOF",
                "bad comment line {line:?}"
            );
            continue;
        }
        assert!(parse_sample(line).is_some(), "not a sample line: {line:?}");
        samples += 1;
    }
    assert!(samples >= 5, "{body}");
    for m in [
        "cairn_backup_last_success_timestamp_seconds{database=\"app\"}",
        "cairn_backup_duration_seconds_count{database=\"app\"} 1",
        "cairn_destination_bytes_written_total{database=\"app\",destination=",
    ] {
        assert!(body.contains(m), "missing {m}:\n{body}");
    }
    // Only once: the next 03:00 is hours away.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(listed(&s, &[], "backups").len(), 1);
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(30)), 0, "{}", d.log());
}

#[test]
fn import_litestream_writes_a_config_that_checks_and_says_what_it_left_out() {
    let s = Scratch::new();
    s.make_db("app.db", 10);
    std::fs::write(
        s.path("litestream.yml"),
        format!(
            "dbs:\n  - path: {}\n    replicas:\n      - type: file\n        path: {}\n        retention: 48h\n        snapshot-interval: 1h\n      - url: abs://account@container/app\n",
            s.path("app.db").display(),
            s.path("replica").display()
        ),
    )
    .unwrap();
    let r = s
        .run(&[
            "config",
            "import-litestream",
            "litestream.yml",
            "-o",
            "cairn.toml",
        ])
        .ok();
    assert!(
        r.stderr
            .contains("note: dbs[0].replicas[1]: abs:// replicas are not supported"),
        "{}",
        r.stderr
    );
    let toml = String::from_utf8(s.read("cairn.toml")).unwrap();
    assert!(toml.contains("keep_within = \"48h\""), "{toml}");
    s.run(&["config", "check", "-c", "cairn.toml"]).ok();
    // It refuses to overwrite.
    let r = s.run(&[
        "config",
        "import-litestream",
        "litestream.yml",
        "-o",
        "cairn.toml",
    ]);
    assert!(
        r.code != 0 && r.stderr.contains("already exists"),
        "{}",
        r.stderr
    );
    // And it runs.
    s.run(&["run-once", "-c", "cairn.toml"]).ok();
    assert_eq!(listed(&s, &[], "replica").len(), 1);
}

/// A URL password given through `${VAR}` never reaches any output: not
/// `config check` (text or JSON), not the daemon's refusal, not run-once,
/// status, the state file, the log, or a notification.
#[test]
fn url_passwords_are_never_printed() {
    const PW: &str = "Pw-Secret-93xz";
    let hook = HttpSink::start(200);
    let s = Scratch::new();
    s.make_db("app.db", 50);
    let env: Vec<(String, String)> = vec![
        ("SFTP_PW".into(), PW.into()),
        ("AWS_ACCESS_KEY_ID".into(), "test".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
    ];
    // Refused outright: a password in an sftp:// URL, credentials in s3://,
    // and a secret query value beside a bad option.
    write_config(
        &s,
        r#"
[[databases]]
name = "app"
source = "app.db"
destinations = ["sftp://me:${SFTP_PW}@127.0.0.1/x", "s3://me:${SFTP_PW}@bucket/x", "s3://bucket/y?parts=0&token=${SFTP_PW}"]
schedule = { every = "1h" }
"#,
    );
    let r = run_env(&s, &env, &["config", "check", "-c", "cairn.toml"]);
    assert_ne!(r.code, 0);
    for e in [
        "databases[0].destinations[0]: destination sftp://me:***@127.0.0.1/x: passwords in sftp:// URLs are not supported",
        "databases[0].destinations[1]: destination s3://me:***@bucket/x: credentials in s3:// URLs are not supported",
        "databases[0].destinations[2]: destination s3://bucket/y?parts=0&token=***: parts=0 is out of range",
    ] {
        assert!(r.stderr.contains(e), "missing {e:?} in:\n{}", r.stderr);
    }
    let j = run_env(&s, &env, &["config", "check", "-c", "cairn.toml", "--json"]);
    assert!(j.stdout.contains("sftp://me:***@"), "{}", j.stdout);
    let d = run_env(&s, &env, &["daemon", "-c", "cairn.toml"]);
    assert_ne!(d.code, 0);
    for out in [
        &r.stdout, &r.stderr, &j.stdout, &j.stderr, &d.stdout, &d.stderr,
    ] {
        assert!(!out.contains(PW), "the password was printed:\n{out}");
    }
    // Accepted but unreachable: an S3 endpoint with a password in it.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    write_config(
        &s,
        &format!(
            r#"
[daemon]
state_dir = "state"
[notifications.hook]
type = "webhook"
url = "{}"
[[databases]]
name = "app"
source = "app.db"
destinations = ["backups", "s3://bucket/x?endpoint=http://k:${{SFTP_PW}}@127.0.0.1:{port}&path_style=true"]
schedule = {{ every = "1h" }}
"#,
            hook.url("/h")
        ),
    );
    let c = run_env(
        &s,
        &env,
        &["config", "check", "-c", "cairn.toml", "--connect"],
    );
    assert_ne!(c.code, 0, "{}", c.stderr);
    assert!(
        c.stderr
            .contains("databases[0].destinations[1]: cannot reach"),
        "{}",
        c.stderr
    );
    let once = run_env(&s, &env, &["run-once", "-c", "cairn.toml"]);
    assert_ne!(once.code, 0);
    assert!(once.stdout.contains("FAILED  app"), "{}", once.stdout);
    let st = run_env(&s, &env, &["status", "-c", "cairn.toml", "--json"]).ok();
    let st_text = run_env(&s, &env, &["status", "-c", "cairn.toml"]).ok();
    assert!(st.stdout.contains("k:***@127.0.0.1"), "{}", st.stdout);
    let state = String::from_utf8(s.read("state/state.json")).unwrap();
    let bodies: Vec<String> = hook
        .requests()
        .iter()
        .map(|r| r.json().to_string())
        .collect();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    for out in [
        &c.stdout,
        &c.stderr,
        &once.stdout,
        &once.stderr,
        &st.stdout,
        &st.stderr,
        &st_text.stdout,
        &state,
        &bodies[0],
    ] {
        assert!(!out.contains(PW), "the password was printed:\n{out}");
    }
}

/// Issue #12 from the daemon's config: a PostgreSQL and a SQLite database
/// into one destination by `run-once`, both in `status`, and the
/// PostgreSQL backup restored into a new database.
#[test]
fn run_once_backs_up_postgres_and_sqlite_into_one_destination_and_restores() {
    use cairn_e2e::postgres::{PASSWORD, PgServer, USER};
    let Some(pg) = PgServer::start() else { return };
    pg.pgbench_init("shop", 1);
    let s = Scratch::new();
    s.make_db("app.db", 400);
    write_config(
        &s,
        &format!(
            r#"
[daemon]
state_dir = "state"
[[databases]]
name = "shop"
source = {{ type = "postgres", host = "127.0.0.1", port = {}, database = "shop", user = "{USER}", password = "${{SHOP_PW}}", sslmode = "disable" }}
destinations = ["backups"]
schedule = {{ cron = "0 3 * * *" }}
retention = {{ keep_last = 3 }}
[[databases]]
name = "app"
source = "app.db"
destinations = ["backups"]
schedule = {{ cron = "0 4 * * *" }}
"#,
            pg.port
        ),
    );
    let env = vec![("SHOP_PW".to_string(), PASSWORD.to_string())];
    run_env(&s, &env, &["config", "check", "-c", "cairn.toml"]).ok();
    let r = run_env(&s, &env, &["run-once", "-c", "cairn.toml", "--json"]).ok();
    assert!(!r.stdout.contains(PASSWORD) && !r.stderr.contains(PASSWORD));
    let st = run_env(&s, &env, &["status", "-c", "cairn.toml", "--json"]).ok();
    assert!(!st.stdout.contains(PASSWORD), "{}", st.stdout);
    let st: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
    let dbs = st.as_array().unwrap();
    assert_eq!(dbs.len(), 2, "{st}");
    for db in dbs {
        assert!(db["last_success"]["time"].is_string(), "{db}");
        let newest = &db["destinations"][0]["newest"];
        assert!(newest["stored_size"].as_u64().unwrap() > 0, "{db}");
    }
    assert_eq!(dbs[0]["database"], "shop");
    assert_eq!(
        dbs[0]["source"],
        format!("postgres://{USER}@127.0.0.1:{}/shop", pg.port)
    );
    assert_ne!(
        dbs[0]["destinations"][0]["newest"]["id"],
        dbs[1]["destinations"][0]["newest"]["id"]
    );
    let list: serde_json::Value =
        serde_json::from_str(&s.run(&["list", "backups", "--json"]).ok().stdout).unwrap();
    let newest = list["newest"].as_object().unwrap();
    assert!(
        newest.contains_key("app.db") && newest.contains_key(&pg.catalog_name("shop")),
        "{list}"
    );
    // Restored from the daemon's destination into a fresh database.
    s.run(&[
        "restore",
        "backups",
        "--db",
        &pg.catalog_name("shop"),
        "--to",
        &pg.url("shop_copy"),
        "--create",
    ])
    .ok();
    let q = "SELECT count(*) || ' ' || sum(abalance) FROM pgbench_accounts";
    assert_eq!(pg.psql("shop_copy", q), pg.psql("shop", q));
    assert_eq!(pg.psql("shop_copy", q).split(' ').next(), Some("100000"));
    s.run(&["restore", "backups", "--db", "app.db", "-o", "back.db"])
        .ok();
    assert_eq!(count_rows(&s.path("back.db")), 400);
}

/// `(start_ms, end_ms)` of each database's last successful backup, from the state file.
fn run_span(s: &Scratch, db: &str) -> (i64, i64) {
    let st: serde_json::Value = serde_json::from_slice(&s.read("state/state.json")).unwrap();
    let run = &st["databases"][db]["last_success"];
    let end = run["time_ms"].as_i64().unwrap_or_else(|| panic!("{st}"));
    let secs = run["seconds"].as_f64().unwrap();
    (end - (secs * 1000.0) as i64, end)
}

/// The daemon's JSON log lines (a `log_format = "json"` daemon), each parsed.
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

#[test]
fn a_run_still_going_when_the_next_is_due_is_skipped_and_logged() {
    let srv = S3Server::s3s_fs();
    let proxy = FaultProxy::start(srv.addr());
    let s = Scratch::new();
    s.make_db("app.db", 300);
    let dest = slow_s3(&srv, &proxy, "overlap", Duration::from_secs(4));
    write_config(
        &s,
        &format!(
            "[daemon]\nstate_dir = \"state\"\nmax_parallel = 4\nlog_format = \"json\"\n[[databases]]\nname = \"app\"\nsource = \"app.db\"\ndestinations = [\"{dest}\"]\nschedule = {{ every = \"1s\" }}\n"
        ),
    );
    let env = srv.env();
    let mut d = Daemon::start(&s, &env);
    wait_for("two finished runs", Duration::from_secs(60), || {
        d.log().matches("backup succeeded").count() >= 2
    });
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(60)), 0, "{}", d.log());
    let log = d.log();
    // Never two at once: starts and ends of the backup job alternate, and
    // the slots that fell due meanwhile were skipped (and said so).
    let mut running = false;
    let (mut starts, mut skips) = (0, 0);
    for l in json_lines(&log) {
        if l["database"] != "app" {
            continue;
        }
        let m = l["message"].as_str().unwrap_or_default();
        if m == "backup started" {
            assert!(!running, "a second run started while one was going:\n{log}");
            running = true;
            starts += 1;
        } else if m == "backup succeeded" || m.starts_with("backup failed") {
            assert!(running, "a run ended that never started:\n{log}");
            running = false;
        } else if m.starts_with("skipped: the previous run") {
            assert!(running, "skipped with nothing running:\n{log}");
            assert_eq!(l["level"], "WARN", "{l}");
            skips += 1;
        }
    }
    // Each run holds a 4 s upload over 1 s slots.
    assert!(
        starts >= 2 && skips >= 2 * (starts - 1),
        "{starts} starts, {skips} skips:\n{log}"
    );
    proxy.clear();
    assert_eq!(listed(&s, &env, &srv.url("overlap")).len(), starts);
}

#[test]
fn max_parallel_1_runs_two_due_databases_one_after_the_other() {
    let srv = S3Server::s3s_fs();
    let proxy = FaultProxy::start(srv.addr());
    let s = Scratch::new();
    s.make_db("a.db", 200);
    s.make_db("b.db", 200);
    proxy.inject(
        Some("PUT"),
        Some("snapshots/"),
        Fault::Delay(Duration::from_secs(2)),
        1000,
    );
    let (da, db) = (srv.url_via(&proxy, "par/a"), srv.url_via(&proxy, "par/b"));
    write_config(
        &s,
        &format!(
            "[daemon]\nstate_dir = \"state\"\nmax_parallel = 1\n[[databases]]\nname = \"a\"\nsource = \"a.db\"\ndestinations = [\"{da}\"]\nschedule = {{ every = \"1h\" }}\n[[databases]]\nname = \"b\"\nsource = \"b.db\"\ndestinations = [\"{db}\"]\nschedule = {{ every = \"1h\" }}\n"
        ),
    );
    let env = srv.env();
    let mut d = Daemon::start(&s, &env);
    wait_for("both runs to succeed", Duration::from_secs(60), || {
        std::fs::read_to_string(s.path("state/state.json"))
            .is_ok_and(|st| st.matches("last_success").count() == 2)
    });
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(60)), 0, "{}", d.log());
    let log = d.log();
    assert!(
        log.contains("due; waiting for a free slot (max_parallel = 1)"),
        "{log}"
    );
    let (a, b) = (run_span(&s, "a"), run_span(&s, "b"));
    // Each took the 2 s upload; one began after the other ended.
    assert!(a.1 - a.0 >= 1900 && b.1 - b.0 >= 1900, "{a:?} {b:?}");
    assert!(
        a.1 <= b.0 + 50 || b.1 <= a.0 + 50,
        "the runs overlapped: a {a:?}, b {b:?}"
    );
}

#[test]
fn sigint_is_like_sigterm_and_a_second_one_stops_the_run_at_once() {
    let srv = S3Server::s3s_fs();
    let proxy = FaultProxy::start(srv.addr());
    let hook = HttpSink::start(200);
    let s = Scratch::new();
    s.make_db("app.db", 500);
    let dest = slow_s3(&srv, &proxy, "int", Duration::from_secs(30));
    write_config(
        &s,
        &format!(
            "[daemon]\nstate_dir = \"state\"\nshutdown_grace = \"60s\"\n[notifications.hook]\ntype = \"webhook\"\nurl = \"{}\"\n[[databases]]\nname = \"app\"\nsource = \"app.db\"\ndestinations = [\"{dest}\"]\nschedule = {{ every = \"1h\" }}\n",
            hook.url("/")
        ),
    );
    let env = srv.env();
    let mut d = Daemon::start(&s, &env);
    wait_for("the archive upload", Duration::from_secs(30), || {
        proxy
            .requests()
            .iter()
            .any(|(m, p)| m == "PUT" && p.contains("snapshots/"))
    });
    d.signal(libc::SIGINT);
    wait_for("the grace period to begin", Duration::from_secs(10), || {
        d.log().contains("letting running jobs finish")
    });
    // The grace period holds the exit while the run goes on.
    std::thread::sleep(Duration::from_secs(2));
    assert!(d.child.try_wait().unwrap().is_none(), "{}", d.log());
    assert!(d.log().contains("SIGINT received"), "{}", d.log());
    let t = Instant::now();
    d.signal(libc::SIGINT);
    assert_eq!(d.wait(Duration::from_secs(30)), 0, "{}", d.log());
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "it waited for the upload"
    );
    assert!(
        d.log()
            .contains("second signal: stopping the running jobs now")
    );
    proxy.clear();
    assert!(listed(&s, &env, &srv.url("int")).is_empty());
    let fails = hooks(&hook, "app", "failure");
    assert_eq!(fails.len(), 1, "{:?}", hook.requests());
}

#[test]
fn json_log_lines_parse_and_carry_their_fields() {
    let s = Scratch::new();
    s.make_db("app.db", 100);
    write_config(
        &s,
        "[daemon]\nstate_dir = \"state\"\nlog_format = \"json\"\n[[databases]]\nname = \"app\"\nsource = \"app.db\"\ndestinations = [\"backups\"]\nschedule = { every = \"1h\" }\n",
    );
    let mut d = Daemon::start(&s, &[]);
    wait_for("a backup", Duration::from_secs(30), || {
        listed(&s, &[], "backups").len() == 1
    });
    wait_for("its record", Duration::from_secs(10), || {
        std::fs::read_to_string(s.path("state/state.json"))
            .is_ok_and(|t| t.contains("last_success"))
    });
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(30)), 0, "{}", d.log());
    let log = d.log();
    let lines = json_lines(&log);
    assert!(lines.len() >= 4, "{log}");
    for l in &lines {
        assert!(l["timestamp"].is_string(), "{l}");
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"]
                .contains(&l["level"].as_str().unwrap_or("")),
            "{l}"
        );
        assert!(l["message"].is_string(), "{l}");
    }
    let started = lines
        .iter()
        .find(|l| l["message"] == "cairn daemon started")
        .unwrap_or_else(|| panic!("{log}"));
    assert_eq!(started["databases"], 1);
    assert!(
        lines.iter().any(|l| l["database"] == "app"
            && l["job"] == "backup"
            && l["message"] == "backup started"),
        "{log}"
    );
    assert!(
        lines.iter().any(|l| l["message"] == "cairn daemon stopped"),
        "{log}"
    );
}

#[test]
fn the_daemon_runs_restore_drills_on_their_own_schedule() {
    let hook = HttpSink::start(200);
    let s = Scratch::new();
    s.make_db("app.db", 500);
    write_config(
        &s,
        &format!(
            "[daemon]\nstate_dir = \"state\"\nmax_parallel = 1\n[notifications.hook]\ntype = \"webhook\"\non = \"both\"\nurl = \"{}\"\n[[databases]]\nname = \"app\"\nsource = \"app.db\"\ndestinations = [\"backups\"]\nschedule = {{ every = \"1h\" }}\nverify = {{ every = \"2s\" }}\n",
            hook.url("/")
        ),
    );
    let mut d = Daemon::start(&s, &[]);
    let drills = |status: &str| -> Vec<serde_json::Value> {
        hook.requests()
            .iter()
            .map(|r| r.json())
            .filter(|j| j["event"] == "drill" && j["status"] == status)
            .collect()
    };
    wait_for("two passed drills", Duration::from_secs(60), || {
        drills("success").len() >= 2
    });
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(30)), 0, "{}", d.log());
    // One backup (hourly), checked again and again by the drill schedule.
    assert_eq!(listed(&s, &[], "backups").len(), 1);
    let id = listed(&s, &[], "backups")[0]["id"].clone();
    for j in drills("success") {
        assert_eq!(j["destinations"][0]["id"], id, "{j}");
    }
    let st: serde_json::Value =
        serde_json::from_str(&s.run(&["status", "-c", "cairn.toml", "--json"]).ok().stdout)
            .unwrap();
    let dest = &st[0]["destinations"][0];
    assert!(dest["last_drill_pass"].is_string(), "{dest}");
    assert_eq!(dest["last_drill_pass_id"], id, "{dest}");
}

#[test]
fn a_daemon_backs_up_to_an_sftp_destination() {
    let Some(srv) = cairn_e2e::servers::SshServer::start() else {
        return;
    };
    let hook = HttpSink::start(200);
    let s = Scratch::new();
    s.make_db("app.db", 300);
    let dest = srv.url("cairn/app");
    write_config(
        &s,
        &format!(
            "[daemon]\nstate_dir = \"state\"\n[notifications.hook]\ntype = \"webhook\"\non = \"both\"\nurl = \"{}\"\n[[databases]]\nname = \"app\"\nsource = \"app.db\"\ndestinations = [\"{dest}\"]\nschedule = {{ every = \"1s\" }}\nretention = {{ keep_last = 2 }}\n",
            hook.url("/")
        ),
    );
    std::fs::create_dir_all(srv.root.join("cairn/app")).unwrap();
    s.run(&["config", "check", "-c", "cairn.toml", "--connect"])
        .ok();
    let mut d = Daemon::start(&s, &[]);
    wait_for("three backups over SFTP", Duration::from_secs(60), || {
        hooks(&hook, "app", "success").len() >= 3
    });
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(60)), 0, "{}", d.log());
    assert!(hooks(&hook, "app", "failure").is_empty(), "{}", d.log());
    assert_eq!(listed(&s, &[], &dest).len(), 2, "keep_last = 2");
    let st: serde_json::Value =
        serde_json::from_str(&s.run(&["status", "-c", "cairn.toml", "--json"]).ok().stdout)
            .unwrap();
    let x = &st[0]["destinations"][0];
    assert!(
        x["destination"].as_str().unwrap().starts_with("sftp://"),
        "{x}"
    );
    assert!(x["newest"]["stored_size"].as_u64().unwrap() > 0, "{x}");
    s.run(&["restore", &dest, "-o", "back.db"]).ok();
    assert_eq!(count_rows(&s.path("back.db")), 300);
}

/// examples/cairn.toml, its absolute paths moved under a temp dir, checks
/// cleanly (sources, key files with safe modes, SMTP settings, URLs).
#[test]
fn the_example_config_checks_once_its_paths_are_substituted() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/cairn.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    let s = Scratch::new();
    let root = s.path("root");
    let r = root.display().to_string();
    let moved = text
        .replace("\"/srv/", &format!("\"{r}/srv/"))
        .replace("\"/etc/", &format!("\"{r}/etc/"))
        .replace("\"/var/", &format!("\"{r}/var/"));
    assert_ne!(moved, text);
    for p in ["srv/app", "srv/auth", "etc/cairn"] {
        std::fs::create_dir_all(root.join(p)).unwrap();
    }
    s.make_db("root/srv/app/app.db", 10);
    s.make_db("root/srv/auth/auth.db", 10);
    for k in ["app", "auth"] {
        let p = root.join(format!("etc/cairn/{k}.key"));
        s.run(&["keygen", "-o", p.to_str().unwrap()]).ok();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    std::fs::write(s.path("cairn.toml"), &moved).unwrap();
    let env = vec![
        ("SMTP_PASSWORD".to_string(), "smtp-Secret".to_string()),
        ("S3_BUCKET".to_string(), "backups".to_string()),
    ];
    let r = run_env(&s, &env, &["config", "check", "-c", "cairn.toml"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("cairn.toml: ok"), "{}", r.stdout);
    // Without its environment, each variable is named.
    let r = s.run(&["config", "check", "-c", "cairn.toml"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("S3_BUCKET is not set"), "{}", r.stderr);
    assert!(
        r.stderr.contains("SMTP_PASSWORD is not set"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("smtp-Secret"));
}

/// A webhook that refuses connections: each retry logged, then one
/// "undeliverable" line with the attempt count; run-once still returns.
#[test]
fn a_dead_webhook_is_retried_then_logged_as_undeliverable() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let s = Scratch::new();
    s.make_db("app.db", 50);
    write_config(
        &s,
        &format!(
            "[notifications.dead]\ntype = \"webhook\"\non = \"both\"\nurl = \"http://127.0.0.1:{port}/hook\"\ntimeout = \"2s\"\nretries = 2\n[[databases]]\nname = \"app\"\nsource = \"app.db\"\ndestinations = [\"backups\"]\nschedule = {{ every = \"1h\" }}\n"
        ),
    );
    let t = Instant::now();
    let r = s.run(&["run-once", "-c", "cairn.toml"]).ok();
    assert!(t.elapsed() < Duration::from_secs(30));
    let retried = r
        .stderr
        .matches("notification not delivered, retrying")
        .count();
    assert_eq!(retried, 2, "{}", r.stderr);
    assert_eq!(
        r.stderr
            .matches("notification undeliverable after 3 attempts")
            .count(),
        1,
        "{}",
        r.stderr
    );
    assert_eq!(listed(&s, &[], "backups").len(), 1);
}

/// Mail over STARTTLS with AUTH to a server whose self-signed certificate
/// cairn trusts through `ca_file`; without it, or with a wrong password,
/// the route is undeliverable (and logged so), never delivered in clear.
#[test]
fn email_over_starttls_with_auth_trusts_ca_file() {
    let s = Scratch::new();
    s.make_db("app.db", 50);
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-keyout",
        ])
        .arg(s.path("key.pem"))
        .arg("-out")
        .arg(s.path("cert.pem"))
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let Some(smtp) = SmtpSink::start_secure(
        &s.path("cert.pem"),
        &s.path("key.pem"),
        "cairn",
        "smtp-Pass-77",
    ) else {
        return;
    };
    let route = |name: &str, password: &str, ca: bool| {
        format!(
            "[notifications.{name}]\ntype = \"email\"\non = \"both\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"starttls\"\nusername = \"cairn\"\npassword = \"{password}\"\nfrom = \"cairn@example.com\"\nto = [\"ops@example.com\"]\ntimeout = \"10s\"\nretries = 0\n{}",
            smtp.port,
            if ca { "ca_file = \"cert.pem\"\n" } else { "" }
        )
    };
    let db = "[[databases]]\nname = \"app\"\nsource = \"app.db\"\ndestinations = [\"backups\"]\nschedule = { every = \"1h\" }\n";
    let env = vec![("SMTP_PW".to_string(), "smtp-Pass-77".to_string())];
    // --connect logs in over TLS.
    write_config(&s, &format!("{}{db}", route("mail", "${SMTP_PW}", true)));
    run_env(
        &s,
        &env,
        &["config", "check", "-c", "cairn.toml", "--connect"],
    )
    .ok();
    // ca_file errors name the field.
    std::fs::write(s.path("junk.pem"), "not a certificate").unwrap();
    write_config(
        &s,
        &format!(
            "{}ca_file = \"junk.pem\"\n{}ca_file = \"nope.pem\"\n{db}",
            route("a", "x", false),
            route("b", "x", false)
        ),
    );
    let r = s.run(&["config", "check", "-c", "cairn.toml"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("notifications.a.ca_file: ")
            && r.stderr.contains("holds no PEM certificate"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("notifications.b.ca_file: cannot read "),
        "{}",
        r.stderr
    );
    // One good route, one that does not trust the server, one with a wrong password.
    write_config(
        &s,
        &format!(
            "{}{}{}{db}",
            route("mail", "${SMTP_PW}", true),
            route("noca", "${SMTP_PW}", false),
            route("badpw", "wrong", true)
        ),
    );
    let r = run_env(&s, &env, &["run-once", "-c", "cairn.toml"]).ok();
    let mails = smtp.messages();
    assert_eq!(mails.len(), 1, "{mails:?}\n{}", r.stderr);
    assert!(mails[0].contains("X-Sink-TLS: yes"), "{}", mails[0]);
    assert!(mails[0].contains("X-Sink-Auth: cairn"), "{}", mails[0]);
    assert!(
        mails[0].contains("Subject: cairn: backup of app succeeded"),
        "{}",
        mails[0]
    );
    let undeliverable: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("notification undeliverable after 1 attempts"))
        .collect();
    assert_eq!(undeliverable.len(), 2, "{}", r.stderr);
    assert!(
        undeliverable.iter().any(|l| l.contains("noca")),
        "{}",
        r.stderr
    );
    assert!(
        undeliverable.iter().any(|l| l.contains("badpw")),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("smtp-Pass-77"));
}

/// `cairn status --json`: the replication entry of the first database.
fn replication_state(s: &Scratch) -> serde_json::Value {
    let r = s.run(&["status", "-c", "cairn.toml", "--json"]);
    if r.code != 0 {
        return serde_json::Value::Null;
    }
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    v[0]["replication"].clone()
}

#[test]
fn replicate_true_runs_a_replicator_restarted_on_sighup_and_stopped_gracefully_on_sigterm() {
    let s = Scratch::new();
    let db = s.make_db("app.db", 100);
    let config = |level: u8| {
        format!(
            "[daemon]\nstate_dir = \"state\"\n\n[[databases]]\nname = \"app\"\nsource = \"app.db\"\ndestinations = [\"replica\"]\nschedule = {{ every = \"24h\" }}\nlevel = {level}\nreplicate = true\n"
        )
    };
    write_config(&s, &config(6));
    s.run(&["config", "check", "-c", "cairn.toml"]).ok();
    let mut d = Daemon::start(&s, &[]);
    wait_for("the replicator to run", Duration::from_secs(60), || {
        replication_state(&s)["state"] == "running"
    });
    let c = rusqlite::Connection::open(&db).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    for i in 0..10 {
        insert_rows(&c, 1000 + i * 10, 10);
    }
    // A changed setting restarts it on SIGHUP; the rows go on.
    write_config(&s, &config(3));
    d.signal(libc::SIGHUP);
    wait_for("the restart", Duration::from_secs(60), || {
        d.log().contains("its settings changed")
            && d.log().matches("replication starting").count() == 2
    });
    wait_for(
        "the replicator to run again",
        Duration::from_secs(60),
        || replication_state(&s)["state"] == "running",
    );
    let r = s.run(&["status", "-c", "cairn.toml"]).ok();
    assert!(r.stdout.contains("replication:   running"), "{}", r.stdout);
    for i in 0..10 {
        insert_rows(&c, 5000 + i * 10, 10);
    }
    drop(c);
    let live = count_rows(&db);
    assert_eq!(live, 300);
    // SIGTERM at once: what was committed is shipped before the exit.
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(60)), 0, "{}", d.log());
    let log = d.log();
    assert!(
        log.contains("replication stopped: everything committed is shipped"),
        "{log}"
    );
    let st = replication_state(&s);
    assert_eq!(st["state"], "stopped", "{st}");
    assert!(st["shipped_txid"].as_u64().unwrap() > 0, "{st}");
    s.run(&["restore", "replica", "-o", "restored.db"]).ok();
    assert_eq!(count_rows(&s.path("restored.db")), live);
    assert!(integrity_ok(&s.path("restored.db")));
    // The lease was released: a replicator can start at once.
    let mut again = s
        .cmd(&["replicate", "app.db", "replica"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        again.try_wait().unwrap().is_none(),
        "the lease was not released"
    );
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(again.id() as libc::pid_t, libc::SIGTERM) };
    assert!(again.wait().unwrap().success());
}

#[test]
fn replicate_true_is_refused_for_postgres_and_a_database_not_in_wal_mode() {
    let s = Scratch::new();
    let c = rusqlite::Connection::open(s.path("rollback.db")).unwrap();
    c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .unwrap();
    drop(c);
    write_config(
        &s,
        r#"
[[databases]]
name = "app"
source = "rollback.db"
destinations = ["replica"]
schedule = { every = "24h" }
replicate = true

[[databases]]
name = "pg"
source = { type = "postgres", host = "127.0.0.1", database = "shop", user = "backup" }
destinations = ["replica-pg"]
schedule = { every = "24h" }
replicate = true
"#,
    );
    let r = s.run(&["config", "check", "-c", "cairn.toml"]);
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("databases[0].replicate: ")
            && r.stderr.contains("is not in WAL mode")
            && r.stderr.contains("PRAGMA journal_mode=WAL"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("databases[1].replicate: continuous replication is for SQLite"),
        "{}",
        r.stderr
    );
    // The daemon refuses to start with it too.
    let r = s.run(&["daemon", "-c", "cairn.toml"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("databases[0].replicate"), "{}", r.stderr);
}

fn metrics_text(port: u16) -> String {
    let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = std::io::Write::write_all(&mut c, b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n");
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    out
}

/// The value of one sample (`name{labels}`) in a metrics text.
fn sample(text: &str, name_labels: &str) -> Option<f64> {
    text.lines()
        .filter_map(parse_sample)
        .find(|(n, _)| n == name_labels)
        .map(|(_, v)| v)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn generation_dbs(s: &Scratch, dest: &str) -> Vec<String> {
    let r = s.run(&["list", dest, "--generations", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap_or_default();
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|g| g["db_name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_failing_replicator_notifies_once_then_its_recovery_once_and_has_metrics() {
    let Some(smtp) = SmtpSink::start() else {
        return;
    };
    let hook = HttpSink::start(200);
    let s = Scratch::new();
    let db = s.make_db("app.db", 50);
    // Another replicator holds the lease: the daemon's fails until it stops.
    let mut holder = s
        .cmd(&["replicate", "app.db", "replica", "--interval", "20ms"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the holder's generation", Duration::from_secs(60), || {
        !generation_dbs(&s, "replica").is_empty()
    });
    let port = free_port();
    write_config(
        &s,
        &format!(
            r#"
[daemon]
state_dir = "state"
metrics_listen = "127.0.0.1:{port}"
[notifications.mail]
type = "email"
host = "127.0.0.1"
port = {}
tls = "none"
from = "cairn@example.com"
to = ["ops@example.com"]
[notifications.hook]
type = "webhook"
url = "{}"
[[databases]]
name = "app"
source = "app.db"
destinations = ["replica"]
schedule = {{ cron = "0 3 * * *" }}
replicate = true
interval = "20ms"
snapshot_interval = "1h"
wal_limit = "8MiB"
lease_ttl = "30s"
"#,
            smtp.port,
            hook.url("/h")
        ),
    );
    s.run(&["config", "check", "-c", "cairn.toml"]).ok();
    let mut d = Daemon::start(&s, &[]);
    let repl_hooks = |status: &str| -> Vec<serde_json::Value> {
        hooks(&hook, "app", status)
            .into_iter()
            .filter(|j| j["event"] == "replication")
            .collect()
    };
    wait_for("the failure webhook", Duration::from_secs(30), || {
        !repl_hooks("failure").is_empty()
    });
    let f = &repl_hooks("failure")[0];
    assert!(f["error"].as_str().unwrap().contains("held by"), "{f}");
    // It is retried after its back-off (5 s) and fails again: no new notice.
    wait_for("a second failure", Duration::from_secs(30), || {
        sample(
            &metrics_text(port),
            "cairn_replication_failures_total{database=\"app\"}",
        )
        .unwrap_or(0.0)
            >= 2.0
    });
    assert!(d.log().matches("replication failed").count() >= 2);
    assert_eq!(repl_hooks("failure").len(), 1, "{}", d.log());
    let m = metrics_text(port);
    assert_eq!(
        sample(&m, "cairn_replication_up{database=\"app\"}"),
        Some(0.0),
        "{m}"
    );
    // The holder stops (its lease released): the next try runs, and its
    // recovery is notified once.
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(holder.id() as libc::pid_t, libc::SIGTERM) };
    assert!(holder.wait().unwrap().success());
    wait_for("the recovery webhook", Duration::from_secs(60), || {
        !repl_hooks("success").is_empty()
    });
    let c = rusqlite::Connection::open(&db).unwrap();
    insert_rows(&c, 1000, 30);
    drop(c);
    wait_for(
        "shipped segments in the metrics",
        Duration::from_secs(30),
        || {
            let m = metrics_text(port);
            sample(
                &m,
                "cairn_replication_segments_shipped_total{database=\"app\"}",
            )
            .is_some_and(|v| v >= 1.0)
                && sample(&m, "cairn_replication_shipped_txid{database=\"app\"}")
                    .is_some_and(|v| v >= 1.0)
        },
    );
    let m = metrics_text(port);
    for (k, min) in [
        (
            "cairn_replication_bytes_shipped_total{database=\"app\"}",
            1.0,
        ),
        ("cairn_replication_generations_total{database=\"app\"}", 1.0),
        ("cairn_replication_up{database=\"app\"}", 1.0),
        ("cairn_replication_lag_seconds{database=\"app\"}", 0.0),
        (
            "cairn_replication_last_shipped_timestamp_seconds{database=\"app\"}",
            1.0,
        ),
    ] {
        assert!(sample(&m, k).is_some_and(|v| v >= min), "{k}:\n{m}");
    }
    assert!(
        sample(&m, "cairn_replication_lag_seconds{database=\"app\"}").unwrap() < 5.0,
        "{m}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(repl_hooks("failure").len(), 1);
    assert_eq!(repl_hooks("success").len(), 1);
    let mails = smtp.messages();
    let subjects: Vec<&String> = mails
        .iter()
        .filter(|m| m.contains("replication of app"))
        .collect();
    assert_eq!(subjects.len(), 2, "{mails:?}");
    assert!(
        mails
            .iter()
            .any(|m| m.contains("Subject: cairn: replication of app FAILED")),
        "{mails:?}"
    );
    assert!(
        mails
            .iter()
            .any(|m| m.contains("Subject: cairn: replication of app recovered")),
        "{mails:?}"
    );
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(60)), 0, "{}", d.log());
    s.run(&["restore", "replica", "-o", "r.db"]).ok();
    assert_eq!(count_rows(&s.path("r.db")), 80);
}

#[test]
fn a_directories_entry_replicates_databases_as_they_come_and_go() {
    let s = Scratch::new();
    std::fs::create_dir(s.path("dbs")).unwrap();
    s.make_db("dbs/a.db", 10);
    write_config(
        &s,
        "[daemon]\nstate_dir = \"state\"\n\n[[directories]]\nname = \"tenants\"\ndir = \"dbs\"\npattern = \"*.db\"\ndestinations = [\"replica\"]\nscan_interval = \"200ms\"\ninterval = \"20ms\"\n",
    );
    s.run(&["config", "check", "-c", "cairn.toml"]).ok();
    let mut d = Daemon::start(&s, &[]);
    wait_for("a.db replicated", Duration::from_secs(60), || {
        generation_dbs(&s, "replica").contains(&"a.db".to_string())
    });
    let b = s.make_db("dbs/b.db", 12);
    wait_for("b.db picked up", Duration::from_secs(60), || {
        generation_dbs(&s, "replica").contains(&"b.db".to_string())
    });
    let c = rusqlite::Connection::open(&b).unwrap();
    insert_rows(&c, 100, 5);
    drop(c);
    // `cairn status` lists the directory's databases with their replication.
    let status = || -> Vec<serde_json::Value> {
        let r = s.run(&["status", "-c", "cairn.toml", "--json"]).ok();
        serde_json::from_str(&r.stdout).unwrap()
    };
    let running = |name: &str| {
        status()
            .iter()
            .any(|d| d["database"] == name && d["replication"]["state"] == "running")
    };
    wait_for("both running in status", Duration::from_secs(30), || {
        running("tenants/a.db") && running("tenants/b.db")
    });
    let st = status();
    let b_st = st.iter().find(|d| d["database"] == "tenants/b.db").unwrap();
    assert_eq!(b_st["directory"], "tenants", "{b_st}");
    assert_eq!(
        b_st["source"],
        s.path("dbs/b.db").display().to_string(),
        "{b_st}"
    );
    assert!(b_st["replication"]["generation"].is_string(), "{b_st}");
    assert_eq!(b_st["destinations"][0]["error"], serde_json::Value::Null);
    assert!(
        b_st["destinations"][0]["newest"]["id"].is_string(),
        "{b_st}"
    );
    let text = s.run(&["status", "-c", "cairn.toml"]).ok().stdout;
    assert!(text.contains("tenants/a.db  ("), "{text}");
    assert!(
        text.contains("replication:   running, generation"),
        "{text}"
    );
    std::thread::sleep(Duration::from_millis(300));
    for f in ["a.db", "a.db-wal", "a.db-shm"] {
        let _ = std::fs::remove_file(s.path(&format!("dbs/{f}")));
    }
    wait_for("a.db's replicator stopped", Duration::from_secs(30), || {
        d.log().contains("replication stopped: removed")
    });
    // A removal is a normal stop: logged at INFO, never as an error.
    let log = d.log();
    assert!(
        !log.lines().any(|l| l.contains("ERROR")),
        "an error logged for a removed database:\n{log}"
    );
    wait_for("a.db gone from status", Duration::from_secs(30), || {
        !status().iter().any(|d| d["database"] == "tenants/a.db")
    });
    assert!(running("tenants/b.db"));
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(60)), 0, "{}", d.log());
    let log = d.log();
    assert!(!log.lines().any(|l| l.contains("ERROR")), "{log}");
    assert!(log.contains("tenants/b.db"), "{log}");
    s.run(&["restore", "replica", "--db", "b.db", "-o", "rb.db"])
        .ok();
    assert_eq!(count_rows(&s.path("rb.db")), 17);
    s.run(&["restore", "replica", "--db", "a.db", "-o", "ra.db"])
        .ok();
    assert_eq!(count_rows(&s.path("ra.db")), 10);
}
