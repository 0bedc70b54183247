//! What a new user ran into (issue 16), each through the real binary: enrolling again
//! on purpose, `check` and `run` agreeing, exit codes, did-you-mean, `simulate`'s
//! reasons, import progress.

use crate::support::{Db, Options, Project, Smtp};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// A project with a one-step sequence `once` besides `intro`, and an SMTP server.
fn project_with_once(db: Db, smtp: &Smtp) -> Project {
    let p = Project::new(
        db,
        &Options {
            smtp_port: smtp.port,
            ..Options::default()
        },
    );
    p.write(
        "sequences/once.yaml",
        "name: once\nsender: sales\nsteps:\n  - id: only\n    template: last\n",
    );
    p.write(
        "people.csv",
        "email,first_name,company\na@prospect.example,A,Acme\nb@prospect.example,B,Bee\n",
    );
    p.ok(&["contacts", "import", p.path("people.csv").to_str().unwrap()]);
    p
}

fn enroll_again_keeps_history(db: Db) {
    let tmp = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(&tmp.path().join("smtp"), "accept");
    let p = project_with_once(db, &smtp);
    let a = "a@prospect.example";
    let b = "b@prospect.example";
    p.ok(&["enroll", "once", a]);
    p.ok(&["run", "--once"]);
    assert_eq!(smtp.received().len(), 1);

    // Finished: plain enroll says why and does nothing (exit 1).
    let out = p.run(&["enroll", "once", a]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let e = stderr(&out);
    assert!(
        e.contains(&format!("{a}: already finished sequence 'once' on "))
            && e.contains("use --again to enroll again"),
        "{e}"
    );
    // --again: a new enrollment; the old one, its message and events stay.
    let o = p.ok(&["enroll", "once", a, "--again"]);
    assert!(o.contains("enrolled 1 in 'once'"), "{o}");
    // A live enrollment is never doubled, --again or not.
    let out = p.run(&["enroll", "once", a, "--again"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("{a}: already in sequence 'once' (active)")),
        "{}",
        stderr(&out)
    );
    p.ok(&["run", "--once"]);
    let got = smtp.received();
    assert_eq!(got.len(), 2, "sent again after --again");
    assert_ne!(got[0].header("Message-ID"), got[1].header("Message-ID"));
    assert_eq!(
        p.sql_count("SELECT count(*) FROM enrollments e JOIN contacts c ON c.id = e.contact_id WHERE c.email = 'a@prospect.example' AND e.sequence = 'once' AND e.state = 'finished'"),
        2,
        "both enrollments kept"
    );
    let show = p.ok(&["contacts", "show", a]);
    assert_eq!(show.matches("enrolled").count(), 2, "{show}");

    // The CSV import option does the same for a file.
    let csv = p.path("people.csv");
    let import = |extra: &[&str]| {
        let mut args = vec![
            "contacts",
            "import",
            csv.to_str().unwrap(),
            "--sequence",
            "once",
        ];
        args.extend_from_slice(extra);
        p.ok(&args)
    };
    let o = import(&[]);
    assert!(o.contains("enrolled 1 in 'once' (1 already in it)"), "{o}");
    let o = import(&["--again"]);
    assert!(
        o.contains("enrolled 1 in 'once' (1 already in it)"),
        "a again, b still live: {o}"
    );
    p.ok(&["run", "--once"]);
    let o = import(&["--again"]);
    assert!(o.contains("enrolled 2 in 'once' (0 already in it)"), "{o}");

    // Suppressed, then unsuppressed: enrolled again only on purpose.
    p.ok(&["enroll", "intro", b]);
    p.ok(&["suppress", b]);
    let out = p.run(&["enroll", "intro", b, "--again"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("suppressed, not enrolled"),
        "{}",
        stderr(&out)
    );
    p.ok(&["unsuppress", b]);
    let out = p.run(&["enroll", "intro", b]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("already stopped in sequence 'intro' on ")
            && stderr(&out).contains("(suppressed); use --again"),
        "{}",
        stderr(&out)
    );
    let o = p.ok(&["enroll", "intro", b, "--again"]);
    assert!(o.contains("enrolled 1 in 'intro'"), "{o}");
    // Operator commands act on the latest enrollment.
    assert!(p.ok(&["pause", "intro", b]).contains("active -> paused"));
    let c = p.counts();
    assert_eq!((c["first"]["paused"], c["first"]["stopped"]), (1, 1));
}

#[test]
fn enroll_again_keeps_history_sqlite() {
    enroll_again_keeps_history(Db::Sqlite);
}

#[test]
fn enroll_again_keeps_history_postgres() {
    enroll_again_keeps_history(Db::Postgres);
}

/// `followup.toml`'s 1-based number of the line that contains `needle`.
fn line_of(p: &Project, needle: &str) -> usize {
    std::fs::read_to_string(&p.config)
        .unwrap()
        .lines()
        .position(|l| l.contains(needle))
        .unwrap()
        + 1
}

#[test]
fn check_and_run_agree_on_secrets_and_never_print_them() {
    let secret = "short-but-SECRET-16";
    let mut p = Project::new(
        Db::Sqlite,
        &Options {
            extra_mailbox: "password_env = \"FOLLOWUP_TEST_UNSET_PW_16\"\n\n\
                [mailboxes.eu]\nfrom = \"Eu <eu@sender.example>\"\nsmtp = \"smtp://127.0.0.1:25\"\n\
                password_file = \"/nonexistent/followup-pw\"\n\n\
                [http]\npublic_url = \"https://t.example.com\"\nsecret_env = \"FOLLOWUP_TEST_SHORT_SECRET\"\n",
            ..Options::default()
        },
    );
    p.env
        .push(("FOLLOWUP_TEST_SHORT_SECRET".into(), secret.into()));
    let expect = [
        (
            format!("followup.toml:{}:16: error: mailbox 'sales': environment variable FOLLOWUP_TEST_UNSET_PW_16 is not set", line_of(&p, "password_env")),
            line_of(&p, "password_env"),
        ),
        (
            format!("followup.toml:{}:17: error: mailbox 'eu': cannot read password file /nonexistent/followup-pw", line_of(&p, "password_file")),
            line_of(&p, "password_file"),
        ),
        (
            format!("followup.toml:{}:14: error: the tracking secret has 19 bytes; it needs at least 32", line_of(&p, "secret_env")),
            line_of(&p, "secret_env"),
        ),
    ];
    let check = p.run(&["check"]);
    assert_eq!(check.status.code(), Some(1), "problems found");
    let run = p.run(&["run", "--once"]);
    assert_eq!(run.status.code(), Some(2), "could not run");
    for out in [&check, &run] {
        let e = stderr(out);
        for (x, _) in &expect {
            assert!(e.contains(x.as_str()), "expected\n{x}\nin\n{e}");
        }
        assert!(!e.contains(secret) && !String::from_utf8_lossy(&out.stdout).contains(secret));
    }
    let json = p.run(&["check", "--json"]);
    assert_eq!(json.status.code(), Some(1));
    assert!(!String::from_utf8_lossy(&json.stdout).contains(secret));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    for (_, line) in &expect {
        assert!(
            v["problems"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["line"] == *line as u64
                    && d["severity"] == "error"
                    && d["path"] == "followup.toml"),
            "line {line} in {v:#}"
        );
    }
    // Commands that need no secret still work where the secrets are not, quietly.
    let status = p.run(&["status"]);
    assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
    assert_eq!(stderr(&status), "", "no warnings outside check and run");
}

#[test]
fn warnings_are_printed_by_check_and_once_by_run_only() {
    let tmp = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(&tmp.path().join("smtp"), "accept");
    let p = project_with_once(Db::Sqlite, &smtp);
    // The test project's templates have no unsubscribe link: a warning.
    const WARNING: &str = "has no way to opt out";
    let check = p.run(&["check"]);
    assert_eq!(check.status.code(), Some(0), "warnings alone are ok");
    assert!(stderr(&check).contains(WARNING), "{}", stderr(&check));
    let json = p.run(&["check", "--json"]);
    assert!(String::from_utf8_lossy(&json.stdout).contains(WARNING));
    for args in [
        &["status"][..],
        &["enroll", "intro", "a@prospect.example"],
        &["preview", "intro", "--contact", "a@prospect.example"],
        &["simulate", "intro"],
        &["contacts", "show", "a@prospect.example"],
        &["pause", "intro", "a@prospect.example"],
        &["resume", "intro", "a@prospect.example"],
    ] {
        let out = p.run(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(
            !stderr(&out).contains(WARNING),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let run = p.run(&["run", "--once"]);
    assert!(run.status.success());
    assert_eq!(
        stderr(&run).matches(WARNING).count(),
        2,
        "once per sequence: {}",
        stderr(&run)
    );
}

#[test]
fn check_reports_every_problem_once_in_one_pass() {
    let p = Project::new(Db::Sqlite, &Options::default());
    // A config error, a template with a syntax error that a sequence names, and a
    // misspelt template: each reported once, all in one run.
    let cfg = std::fs::read_to_string(&p.config)
        .unwrap()
        .replace("Asia/Shanghai", "Asia/Shangai");
    std::fs::write(&p.config, cfg).unwrap();
    p.write("templates/bump.hbs", "---\nsubject: x\n---\n{{#each}}\n");
    p.write(
        "sequences/intro.yaml",
        "name: intro\nsender: sales\nsteps:\n  - id: first\n    template: first\n  - id: bump\n    wait: 1d\n    template: bump\n  - id: last\n    wait: 1d\n    template: lastt\n",
    );
    let out = p.run(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(
        e.contains("followup.toml:2:12: error: unknown time zone 'Asia/Shangai'")
            && e.contains("did you mean 'Asia/Shanghai'?"),
        "{e}"
    );
    assert_eq!(e.matches("templates/bump.hbs:").count(), 1, "{e}");
    assert!(!e.contains("unknown template 'bump'"), "{e}");
    assert!(
        e.contains("sequences/intro.yaml:11:15: error: unknown template 'lastt'"),
        "{e}"
    );
    assert!(e.contains("3 error(s)"), "{e}");
}

#[test]
fn exit_codes_and_did_you_mean() {
    let tmp = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(&tmp.path().join("smtp"), "accept");
    let p = project_with_once(Db::Sqlite, &smtp);
    assert_eq!(p.run(&["check"]).status.code(), Some(0));
    // An unknown sequence: could not run (2), with the name meant.
    let csv = p.path("people.csv");
    for args in [
        &["enroll", "intor", "a@prospect.example"][..],
        &[
            "contacts",
            "import",
            csv.to_str().unwrap(),
            "--sequence",
            "intor",
        ],
        &["preview", "intor"],
        &["simulate", "intor"],
    ] {
        let out = p.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&out).contains("unknown sequence 'intor': did you mean 'intro'?"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // Nothing to do: 1.
    p.ok(&["enroll", "intro", "a@prospect.example"]);
    assert_eq!(
        p.run(&["enroll", "intro", "a@prospect.example"])
            .status
            .code(),
        Some(1)
    );
    assert_eq!(
        p.run(&["unsuppress", "a@prospect.example"]).status.code(),
        Some(1)
    );
    // A contact's unknown time zone: the row is rejected with the zone meant (1).
    p.write(
        "tz.csv",
        "email,timezone\nz@prospect.example,Europe/Berln\n",
    );
    let out = p.run(&["contacts", "import", p.path("tz.csv").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out)
            .contains("row 2: unknown time zone 'Europe/Berln' (did you mean 'Europe/Berlin'?)"),
        "{}",
        stderr(&out)
    );
    // A project with errors: check finds problems (1), other commands cannot run (2).
    std::fs::write(
        &p.config,
        std::fs::read_to_string(&p.config)
            .unwrap()
            .replace("Asia/Shanghai", "Asia/Shangai"),
    )
    .unwrap();
    assert_eq!(p.run(&["check"]).status.code(), Some(1));
    for args in [
        &["run", "--once"][..],
        &["status"],
        &["enroll", "intro", "b@prospect.example"],
    ] {
        let out = p.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            stderr(&out).contains("did you mean 'Asia/Shanghai'?"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn simulate_says_why_a_step_moved() {
    let tmp = tempfile::tempdir().unwrap();
    let smtp = Smtp::start(&tmp.path().join("smtp"), "accept");
    let p = Project::new(
        Db::Sqlite,
        &Options {
            smtp_port: smtp.port,
            extra_mailbox: "daily_limit = 1\n",
            ..Options::default()
        },
    );
    // German contacts have the next ten days off (dates relative to today, so that the
    // test holds on any day).
    let today = chrono::Utc::now().date_naive();
    let off = format!(
        "{}..{}",
        today - chrono::Duration::days(1),
        today + chrono::Duration::days(9)
    );
    let cfg = std::fs::read_to_string(&p.config).unwrap();
    std::fs::write(
        &p.config,
        format!("{cfg}\n[country_holidays]\nDE = [\"{off}\"]\n"),
    )
    .unwrap();
    p.write(
        "people.csv",
        "email,company,country\nde@prospect.example,Acme,DE\ncn@prospect.example,Bee,CN\nx@prospect.example,X,CN\n",
    );
    p.ok(&["contacts", "import", p.path("people.csv").to_str().unwrap()]);
    let o = p.ok(&["simulate", "intro", "--contact", "de@prospect.example"]);
    let first = o.lines().find(|l| l.starts_with("first ")).unwrap();
    assert!(
        first.contains(&format!("holiday {today} (country_holidays.DE)")),
        "{o}"
    );
    // The mailbox sends one a day: once it has, a contact due now goes tomorrow.
    let o = p.ok(&["simulate", "intro", "--contact", "cn@prospect.example"]);
    let first = o.lines().find(|l| l.starts_with("first ")).unwrap();
    assert!(first.ends_with(" -"), "not moved: {o}");
    p.ok(&["enroll", "intro", "x@prospect.example"]);
    p.ok(&["run", "--once"]);
    assert_eq!(smtp.received().len(), 1);
    let o = p.ok(&["simulate", "intro", "--contact", "cn@prospect.example"]);
    let first = o.lines().find(|l| l.starts_with("first ")).unwrap();
    assert!(
        first.contains("mailbox's daily limit of 1 reached today"),
        "{o}"
    );
}

#[test]
fn import_progress_only_on_a_terminal() {
    let p = Project::new(Db::Sqlite, &Options::default());
    let mut csv = String::from("email,company\n");
    for i in 0..5_000 {
        csv.push_str(&format!("p{i:05}@prospect.example,Co {i}\n"));
    }
    p.write("many.csv", &csv);
    let file = p.path("many.csv");
    // In a pipe (as here, and in logs): no bar, only the summary.
    let out = p.run(&[
        "contacts",
        "import",
        file.to_str().unwrap(),
        "--sequence",
        "intro",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "", "nothing but the result in a pipe");
    assert!(String::from_utf8_lossy(&out.stdout).contains("enrolled 5000 in 'intro'"));
    // On a terminal (a pseudo-terminal from util-linux's `script`), the bar is drawn.
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        return;
    }
    p.write("more.csv", &csv.replace("@prospect", "@other"));
    let cmd = format!(
        "{} --config {} contacts import {} --sequence intro",
        crate::support::BIN,
        p.config.display(),
        p.path("more.csv").display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("FOLLOWUP_LOG", "warn")
        .output()
        .unwrap();
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{tty}");
    assert!(
        tty.contains("importing") || tty.contains("enrolling"),
        "{tty}"
    );
    assert!(tty.contains("enrolled 5000 in 'intro'"), "{tty}");
}
