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
    let Some(srv) = S3Server::s3s_fs() else {
        return;
    };
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
    let Some(srv) = S3Server::s3s_fs() else {
        return;
    };
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
    let Some(srv) = S3Server::s3s_fs() else {
        return;
    };
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
    let Some(srv) = S3Server::s3s_fs() else {
        return;
    };
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
