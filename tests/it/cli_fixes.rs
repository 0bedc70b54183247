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
