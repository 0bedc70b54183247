//! SMTP over TLS against a real server (aiosmtpd with a certificate from a private CA
//! made by `tests/support/pki.sh`): STARTTLS and implicit TLS (smtps://) with the mailbox's
//! `ca_file`, the login sent only inside TLS, and a certificate nobody vouches for
//! refused.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{Db, Options, Project, Smtp};

/// A CA and a server certificate for 127.0.0.1 signed by it (`tests/support/pki.sh`):
/// (ca.pem, server.pem, server.key).
fn private_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/pki.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(dir)
        .output()
        .expect("bash tests/support/pki.sh");
    assert!(
        out.status.success(),
        "pki.sh (needs openssl): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// A TLS SMTP server (`--tls starttls` or `implicit`) whose certificate comes from a
/// private CA, requiring the rep's login; and the CA's certificate.
fn tls_server(tmp: &Path, tls: &str) -> (Smtp, PathBuf) {
    let (ca, cert, key) = private_ca(&tmp.join("pki"));
    let smtp = Smtp::start_with(
        &tmp.join("smtp"),
        "accept",
        &[
            "--tls",
            tls,
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--auth",
            "rep:s3cret-pw",
        ],
    );
    (smtp, ca)
}

/// A project whose mailbox sends to `url` with a login, and `extra` config lines.
fn project(url: &str, extra: &str) -> Project {
    let mut p = Project::new(Db::Sqlite, &Options::default());
    let config = std::fs::read_to_string(&p.config).unwrap();
    let (head, _) = config.split_once("smtp = \"smtp://").unwrap();
    let rest = config[head.len()..].split_once('\n').unwrap().1;
    std::fs::write(
        &p.config,
        format!(
            "{head}smtp = \"{url}\"\nuser = \"rep\"\npassword_env = \"TLS_TEST_PASSWORD\"\n{extra}{rest}"
        ),
    )
    .unwrap();
    p.env.push(("TLS_TEST_PASSWORD".into(), "s3cret-pw".into()));
    p
}

/// `run --once` with the first steps of two contacts due; its stderr.
fn send_first_steps(p: &Project) -> String {
    p.import_contacts(2);
    let out = p.run(&["run", "--once"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "run --once: {stderr}");
    stderr
}

/// Every transaction the server logged came over TLS, after the rep's login.
fn assert_all_over_tls(smtp: &Smtp, n: usize) {
    let log = smtp.log();
    assert_eq!(log.len(), n, "{log:?}");
    for entry in &log {
        assert_eq!(entry["result"], "250", "{entry}");
        assert_eq!(entry["tls"], true, "{entry}");
        assert_eq!(entry["auth"], "rep", "{entry}");
    }
    assert_eq!(smtp.received().len(), n);
}

#[test]
fn starttls_with_the_mailboxs_ca_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (smtp, ca) = tls_server(tmp.path(), "starttls");
    let p = project(
        &format!("smtp+starttls://127.0.0.1:{}", smtp.port),
        "ca_file = \"pki/ca.pem\"\n",
    );
    // Relative to the project, as `contacts` and `file://` paths are.
    std::fs::create_dir_all(p.path("pki")).unwrap();
    std::fs::copy(&ca, p.path("pki/ca.pem")).unwrap();
    p.ok(&["check"]);
    let stderr = send_first_steps(&p);
    assert!(
        !stderr.contains("s3cret-pw"),
        "the password is never logged"
    );
    assert_all_over_tls(&smtp, 2);
    assert_eq!(p.counts()["first"]["sent"], 2);
}

#[test]
fn smtps_with_the_mailboxs_ca_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (smtp, ca) = tls_server(tmp.path(), "implicit");
    let p = project(
        &format!("smtps://127.0.0.1:{}", smtp.port),
        &format!("ca_file = \"{}\"\n", ca.display()),
    );
    send_first_steps(&p);
    assert_all_over_tls(&smtp, 2);
}

/// Without `ca_file` the private CA is nobody the public roots know: nothing is sent,
/// the login never leaves, and the step waits to be retried with rustls's reason.
#[test]
fn a_certificate_no_root_vouches_for_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (smtp, _) = tls_server(tmp.path(), "starttls");
    let p = project(&format!("smtp+starttls://127.0.0.1:{}", smtp.port), "");
    let stderr = send_first_steps(&p);
    assert!(
        stderr.contains("invalid peer certificate: UnknownIssuer"),
        "{stderr}"
    );
    assert!(smtp.log().is_empty(), "{:?}", smtp.log());
    assert!(smtp.received().is_empty());
    let first = &p.counts()["first"];
    assert_eq!(first.get("sent").copied().unwrap_or(0), 0, "{first:?}");
    assert_eq!(first["deferred"], 2, "{first:?}");
    let status = p.ok(&["status", "intro"]);
    assert!(
        status.contains("active x2: retrying: TLS: invalid peer certificate: UnknownIssuer"),
        "status says why: {status}"
    );
}

#[test]
fn check_points_at_a_bad_ca_file() {
    let p = project("smtp+starttls://127.0.0.1:2525", "ca_file = \"ca.pem\"\n");
    p.write("ca.pem", "this is not a certificate\n");
    let out = p.run(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let text = format!("{stdout}{stderr}");
    let config = std::fs::read_to_string(&p.config).unwrap();
    let line = config
        .lines()
        .position(|l| l.starts_with("ca_file"))
        .unwrap()
        + 1;
    assert!(
        text.contains(&format!(
            "followup.toml:{line}:11: error: mailbox 'sales': ca_file: "
        )) && text.contains("ca.pem holds no certificate"),
        "{text}"
    );
    assert!(
        text.contains("ca_file = \"ca.pem\""),
        "shows the line: {text}"
    );
}

/// A refused login (535) is the mailbox's problem, not the contacts': the mailbox
/// pauses with the server's answer in `status`, the steps wait (deferred, not failed),
/// and once the password is fixed and the mailbox resumed they go out.
#[test]
fn a_refused_login_pauses_the_mailbox_and_stops_no_contact() {
    let tmp = tempfile::tempdir().unwrap();
    let smtp = Smtp::start_with(
        &tmp.path().join("smtp"),
        "accept",
        &["--auth", "rep:s3cret-pw"],
    );
    let mut p = project(&format!("smtp://127.0.0.1:{}", smtp.port), "");
    p.env = vec![("TLS_TEST_PASSWORD".into(), "wrong-pw".into())];
    let stderr = send_first_steps(&p);
    assert!(stderr.contains("mailbox paused"), "{stderr}");
    assert!(smtp.received().is_empty());
    let first = &p.counts()["first"];
    assert_eq!(first.get("failed").copied().unwrap_or(0), 0, "{first:?}");
    assert_eq!(first["deferred"], 2, "{first:?}");
    let status = p.ok(&["status"]);
    assert!(
        status.contains(&format!(
            "mailbox sales PAUSED: login refused by 127.0.0.1:{}: 535",
            smtp.port
        )),
        "status says why: {status}"
    );
    assert!(status.contains("active x2"), "{status}");
    // While paused, another run sends nothing and refuses nothing.
    p.ok(&["run", "--once"]);
    assert!(smtp.log().is_empty());

    p.env = vec![("TLS_TEST_PASSWORD".into(), "s3cret-pw".into())];
    assert!(p.ok(&["resume", "--mailbox", "sales"]).contains("resumed"));
    // The retry is due a second later (retry_base = 1s); wait for it, not for a time.
    for _ in 0..50 {
        p.ok(&["run", "--once"]);
        if smtp.received().len() == 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_all_over_login(&smtp, 2);
    assert_eq!(p.counts()["first"]["sent"], 2);
}

/// Every transaction the server logged was accepted after the rep's login.
fn assert_all_over_login(smtp: &Smtp, n: usize) {
    let log = smtp.log();
    assert_eq!(log.len(), n, "{log:?}");
    for entry in &log {
        assert_eq!(entry["result"], "250", "{entry}");
        assert_eq!(entry["auth"], "rep", "{entry}");
    }
}
