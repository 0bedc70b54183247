//! `followup check`, contact import and enrollment commands, as a user sees them.

use crate::support::{Db, Options, Project};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn check_reports_every_problem_with_file_line_column() {
    let p = Project::new(Db::Sqlite, &Options::default());
    p.write(
        "sequences/intro.yaml",
        "name: intro\nsender: sale\nwindow: Mon-Fri 09:00-17:00\nsteps:\n  - id: first\n    template: first\n  - id: bump\n    wiat: 3d\n    template: bumpp\n  - id: bump\n    wait: 3x\n    template: last\n",
    );
    p.write(
        "templates/broken.hbs",
        "---\nsubject: Hi\n---\nHello {{#if x}}\n",
    );
    p.write("contacts.csv", "email,first_name\nli@prospect.example,Li\n");
    let cfg = std::fs::read_to_string(&p.config).unwrap().replace(
        "window = \"always\"",
        "window = \"always\"\ncontacts = \"contacts.csv\"",
    );
    std::fs::write(&p.config, cfg).unwrap();
    let out = p.run(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    let expect = [
        "sequences/intro.yaml:2:9: error: unknown mailbox 'sale'\n  |\n2 | sender: sale\n  |         ^^^^ did you mean 'sales'?",
        "sequences/intro.yaml:8:5: error: unknown key 'wiat' in step\n  |\n8 |     wiat: 3d\n  |     ^^^^ did you mean 'wait'?",
        "sequences/intro.yaml:9:15: error: unknown template 'bumpp'\n  |\n9 |     template: bumpp\n  |               ^^^^^ did you mean 'bump'?",
        "sequences/intro.yaml:10:9: error: duplicate step id 'bump' (first used on line 7)",
        "sequences/intro.yaml:11:11: error: bad wait '3x'",
        "templates/broken.hbs:",
        "templates/first.hbs:2:23: error: field 'company' has no default and contacts.csv has no 'company' column\n  |\n2 | subject: \"Samples for {{company}}\"\n  |                       ^^^^^^^ add `defaults: { company: \"...\" }`",
    ];
    for x in expect {
        assert!(e.contains(x), "expected\n{x}\nin\n{e}");
    }
    // `run` refuses to start on the same errors (could not run: 2), and says nothing
    // was changed.
    let out = p.run(&["run", "--once"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unknown mailbox 'sale'"));
    assert!(
        !p.path("followup.db").exists(),
        "no database was even created"
    );
}

#[test]
fn check_accepts_the_starter_project_and_json_lists_problems() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(crate::support::BIN)
        .arg("init")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let cfg = dir.path().join("followup.toml");
    let out = std::process::Command::new(crate::support::BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("check")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // The starter runs at once into its outbox.
    let out = std::process::Command::new(crate::support::BIN)
        .arg("--config")
        .arg(&cfg)
        .args(["run", "--once"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let eml: Vec<_> = std::fs::read_dir(dir.path().join("outbox"))
        .unwrap()
        .filter_map(|e| e.ok())
        .collect();
    assert_eq!(eml.len(), 2, "one first mail per sample contact");
    // A broken template shows up in --json.
    std::fs::write(
        dir.path().join("templates/bump.hbs"),
        "---\nsubject: x\n---\n{{#each}}\n",
    )
    .unwrap();
    let out = std::process::Command::new(crate::support::BIN)
        .arg("--config")
        .arg(&cfg)
        .args(["check", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["problems"][0]["path"], "templates/bump.hbs");
    assert!(v["problems"][0]["line"].as_u64().unwrap() >= 4, "{v}");
}

#[test]
fn import_reports_bad_rows_and_never_enrolls_twice() {
    let p = Project::new(Db::Sqlite, &Options::default());
    p.write(
        "leads.csv",
        "email,first_name,company\na@prospect.example,A,Acme\nnot-an-address,B,Bad\nA@Prospect.Example,,Acme Corp\nc@prospect.example,C,Cee\n",
    );
    let out = p.run(&[
        "contacts",
        "import",
        p.path("leads.csv").to_str().unwrap(),
        "--sequence",
        "intro",
    ]);
    assert_eq!(out.status.code(), Some(1), "bad rows make the exit code 1");
    let e = stderr(&out);
    assert!(
        e.contains("leads.csv: row 3: 'not-an-address' has no '@'"),
        "{e}"
    );
    assert!(
        e.contains("leads.csv: row 4: same address as row 2 (a@prospect.example): merged"),
        "{e}"
    );
    let o = String::from_utf8_lossy(&out.stdout);
    assert!(o.contains("imported 2 contact(s): 2 new"), "{o}");
    assert!(o.contains("enrolled 2 in 'intro'"), "{o}");
    // Re-import: fields updated, nobody enrolled twice.
    p.write(
        "leads.csv",
        "email,first_name,company\na@prospect.example,Anna,Acme\nc@prospect.example,C,Cee\n",
    );
    let o = p.ok(&[
        "contacts",
        "import",
        p.path("leads.csv").to_str().unwrap(),
        "--sequence",
        "intro",
    ]);
    assert!(o.contains("1 updated, 1 unchanged"), "{o}");
    assert!(o.contains("enrolled 0 in 'intro' (2 already in it)"), "{o}");
    let show = p.ok(&["contacts", "show", "a@prospect.example"]);
    assert!(show.contains("first_name: Anna"), "{show}");
    assert!(show.contains("company: Acme"), "{show}");
    assert_eq!(p.counts()["first"]["scheduled"], 2);
    // Dry run changes nothing.
    p.write("more.csv", "email\nnew@prospect.example\n");
    let o = p.ok(&[
        "contacts",
        "import",
        p.path("more.csv").to_str().unwrap(),
        "--sequence",
        "intro",
        "--dry-run",
    ]);
    assert!(
        o.contains("dry run: 1 contact(s) would be imported (1 new"),
        "{o}"
    );
    assert_eq!(p.counts()["first"]["scheduled"], 2);
}

#[test]
fn enroll_pause_resume_unenroll() {
    let p = Project::new(Db::Sqlite, &Options::default());
    p.write(
        "one.csv",
        "email,first_name,company\na@prospect.example,A,Acme\nb@prospect.example,B,Bee\n",
    );
    p.ok(&["contacts", "import", p.path("one.csv").to_str().unwrap()]);
    assert_eq!(p.counts()["first"]["scheduled"], 0);
    let o = p.ok(&[
        "enroll",
        "intro",
        "a@prospect.example",
        "B@prospect.example",
    ]);
    assert!(o.contains("enrolled 2"), "{o}");
    // Nothing to do is exit 1, with why.
    let out = p.run(&["enroll", "intro", "a@prospect.example"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("enrolled 0 in 'intro' (1 already in it)")
    );
    assert!(stderr(&out).contains("a@prospect.example: already in sequence 'intro' (active)"));
    let out = p.run(&["enroll", "intro", "nobody@prospect.example"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("nobody@prospect.example: no such contact"));
    assert!(p
        .ok(&["pause", "intro", "a@prospect.example"])
        .contains("active -> paused"));
    assert_eq!(p.counts()["first"]["paused"], 1);
    assert!(p
        .ok(&["resume", "intro", "a@prospect.example"])
        .contains("paused -> active"));
    assert!(p
        .ok(&["unenroll", "intro", "b@prospect.example"])
        .contains("active -> stopped"));
    let out = p.run(&["resume", "intro", "b@prospect.example"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot resume: stopped"));
    let c = p.counts();
    assert_eq!((c["first"]["scheduled"], c["first"]["stopped"]), (1, 1));
}

#[test]
fn missing_field_holds_the_contact_until_reimport() {
    let tmp = tempfile::tempdir().unwrap();
    let smtp = crate::support::Smtp::start(&tmp.path().join("smtp"), "accept");
    let p = Project::new(
        Db::Sqlite,
        &Options {
            smtp_port: smtp.port,
            ..Options::default()
        },
    );
    // No company for b: the first template uses {{company}} with no default.
    p.write(
        "c.csv",
        "email,first_name,company\na@prospect.example,A,Acme\nb@prospect.example,B,\n",
    );
    p.ok(&[
        "contacts",
        "import",
        p.path("c.csv").to_str().unwrap(),
        "--sequence",
        "intro",
    ]);
    p.ok(&["run", "--once"]);
    assert_eq!(
        smtp.received().len(),
        1,
        "only the complete contact got mail"
    );
    let status = p.ok(&["status", "intro"]);
    assert!(
        status.contains("held x1: missing field 'company' (used at"),
        "{status}"
    );
    assert!(status.contains("templates/first.hbs:2:23"), "{status}");
    p.write("fix.csv", "email,company\nb@prospect.example,Bee Ltd\n");
    let o = p.ok(&["contacts", "import", p.path("fix.csv").to_str().unwrap()]);
    assert!(
        o.contains("1 held enrollment(s) will be tried again"),
        "{o}"
    );
    p.ok(&["run", "--once"]);
    let got = smtp.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].header("Subject"), Some("Samples for Bee Ltd"));
}

#[test]
fn preview_prints_the_exact_message_and_simulate_the_times() {
    let p = Project::new(
        Db::Sqlite,
        &Options {
            waits: ("3d", "1w"),
            ..Options::default()
        },
    );
    p.write(
        "c.csv",
        "email,name,first_name,company,timezone\nli@prospect.example,李雷,雷,Acme,Asia/Shanghai\n",
    );
    let cfg = std::fs::read_to_string(&p.config).unwrap().replace(
        "window = \"always\"",
        "window = \"Mon-Fri 09:00-17:00\"\ncontacts = \"c.csv\"",
    );
    std::fs::write(&p.config, cfg).unwrap();
    let out = p.ok(&[
        "preview",
        "intro",
        "--step",
        "bump",
        "--contact",
        "li@prospect.example",
    ]);
    assert!(
        out.contains("To: =?utf-8?b?5p2O6Zu3?= <li@prospect.example>\r\n"),
        "{out}"
    );
    assert!(out.contains("Subject: Re: Samples for Acme\r\n"), "{out}");
    assert!(
        out.contains("In-Reply-To: <first-step@sender.example>\r\n"),
        "{out}"
    );
    assert!(
        out.contains("STEP=3Dbump"),
        "quoted-printable text part: {out}"
    );
    let out = p.ok(&["simulate", "intro", "--contact", "li@prospect.example"]);
    assert!(out.contains("(Asia/Shanghai)"), "{out}");
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("first") || l.starts_with("bump") || l.starts_with("last"))
        .collect();
    assert_eq!(lines.len(), 3, "{out}");
    for l in lines {
        assert!(
            !l.contains(" Sat ") && !l.contains(" Sun "),
            "never at the weekend: {l}"
        );
        assert!(l.contains(" CST"), "local time in the contact's zone: {l}");
    }
}

/// Opting out and bulk rules, as warnings `check` prints (exit 0: they are advice).
#[test]
fn check_warns_about_opt_out_postal_address_and_bulk_volume() {
    let p = Project::new(
        Db::Sqlite,
        &Options {
            extra_mailbox: "daily_limit = 6000\n",
            ..Options::default()
        },
    );
    let out = p.run(&["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let e = stderr(&out);
    for x in [
        "sequences/intro.yaml:2:9: warning: sequence 'intro' has no way to opt out: not every template has {{unsubscribe_url}}\n  |\n2 | sender: sales\n  |         ^^^^^ put a link such as",
        "sequences/intro.yaml:2:9: warning: sequence 'intro' may reach many contacts and not every template has a postal address (CAN-SPAM asks for one)",
        "sequences/intro.yaml:2:9: warning: sequence 'intro': its mailboxes allow 6000 a day, near or past the 5,000 a day to one provider from which Gmail and Yahoo require one-click unsubscribe",
    ] {
        assert!(e.contains(x), "expected\n{x}\nin\n{e}");
    }
    // Fixed: one-click, a link and an address in every template.
    let seq = std::fs::read_to_string(p.path("sequences/intro.yaml")).unwrap();
    p.write(
        "sequences/intro.yaml",
        &seq.replacen(
            "sender: sales\n",
            "sender: sales\nunsubscribe: one-click\n",
            1,
        ),
    );
    for t in ["first", "bump", "last"] {
        let path = p.path(&format!("templates/{t}.hbs"));
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            format!("{text}\nUnsubscribe: {{{{unsubscribe_url}}}}\n{{{{postal_address}}}}\n"),
        )
        .unwrap();
    }
    let html = std::fs::read_to_string(p.path("templates/first.html")).unwrap();
    p.write(
        "templates/first.html",
        &format!("{html}<p><a href=\"{{{{unsubscribe_url}}}}\">unsubscribe</a> {{{{postal_address}}}}</p>"),
    );
    let cfg = std::fs::read_to_string(&p.config).unwrap();
    std::fs::write(
        &p.config,
        format!("postal_address = \"1 Test Road, Shenzhen\"\n{cfg}"),
    )
    .unwrap();
    let out = p.run(&["check"]);
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{e}");
    assert!(!e.contains("warning"), "{e}");
}

/// `check`'s output: stdout and stderr together, and its exit code (a crash from a
/// stack overflow has none).
fn check_output(p: &Project) -> (Option<i32>, String) {
    let out = p.run(&["check"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    (out.status.code(), text)
}

#[test]
fn deeply_nested_yaml_is_an_error_at_its_place_not_a_crash() {
    let p = Project::new(Db::Sqlite, &Options::default());
    // 50,000 nested block sequences on one line (100 KB) ...
    p.write(
        "sequences/deep.yaml",
        &format!("{}x\n", "- ".repeat(50_000)),
    );
    // ... and 300 on lines indented deeper and deeper.
    let lines: String = (0..300).map(|i| format!("{}-\n", " ".repeat(i))).collect();
    p.write("sequences/stairs.yaml", &lines);
    // And in a template's front matter.
    p.write(
        "templates/deep.hbs",
        &format!(
            "---\nsubject: Hi\ndefaults:\n  {}x\n---\nHello\n",
            "- ".repeat(50_000)
        ),
    );
    // And Handlebars blocks: 2,000 nested `{{#if}}` overflowed the stack as well.
    p.write(
        "templates/blocks.hbs",
        &format!(
            "---\nsubject: Hi\n---\n{}x{}\n",
            "{{#if x}}".repeat(2_000),
            "{{/if}}".repeat(2_000)
        ),
    );
    let (code, text) = check_output(&p);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("templates/blocks.hbs:4:577: error: blocks or ( ) nested more than 64 deep"),
        "{text}"
    );
    // The offending line (100 KB of dashes) is not printed.
    assert!(!text.contains("- - - - - - - -"), "{}", text.len());
    for expected in [
        "sequences/deep.yaml:1:129: error: YAML nested more than 64 levels deep",
        "sequences/stairs.yaml:65:65: error: YAML nested more than 64 levels deep",
        "templates/deep.hbs:4:129: error: YAML nested more than 64 levels deep",
    ] {
        assert!(text.contains(expected), "expected\n{expected}\nin\n{text}");
    }
    // The good sequence still loads: its own checks ran, and found only warnings.
    assert!(!text.contains("sequences/intro.yaml:2:9: error"), "{text}");
    assert!(text.contains("sequences/intro.yaml:2:9: warning"), "{text}");
}

#[test]
fn partials_that_include_each_other_are_an_error_at_the_include() {
    let p = Project::new(Db::Sqlite, &Options::default());
    p.write(
        "templates/a.hbs",
        "---\nsubject: A\n---\nHello {{> b.text}}\n",
    );
    p.write(
        "templates/b.hbs",
        "---\nsubject: B\n---\nSee\n  {{> a.text}}\n",
    );
    p.write(
        "templates/c.hbs",
        "---\nsubject: C\n---\n{{#*inline \"loop\"}}{{> loop}}{{/inline}}{{> loop}}\n",
    );
    let (code, text) = check_output(&p);
    assert_eq!(code, Some(1), "{text}");
    for expected in [
        "templates/a.hbs:4:7: error: partial 'b.text' includes 'a.text' again: the render would never end",
        "templates/b.hbs:5:3: error: partial 'a.text' includes 'b.text' again",
        "templates/c.hbs:4:",
    ] {
        assert!(text.contains(expected), "expected\n{expected}\nin\n{text}");
    }
    // A partial that does not loop is fine.
    p.write("templates/a.hbs", "---\nsubject: A\n---\nHello\n");
    p.write(
        "templates/b.hbs",
        "---\nsubject: B\n---\nSee {{> a.text}}\n",
    );
    std::fs::remove_file(p.path("templates/c.hbs")).unwrap();
    p.ok(&["check"]);
}

#[test]
fn oversized_files_and_files_outside_the_project_are_refused_unread() {
    let p = Project::new(Db::Sqlite, &Options::default());
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret.txt");
    std::fs::write(&secret, "---\nsubject: {{\n---\nTOP-SECRET-LINE {{\n").unwrap();
    std::fs::write(outside.path().join("leads.csv"), "email\nTOP-SECRET-ROW\n").unwrap();
    std::os::unix::fs::symlink(&secret, p.path("templates/leak.hbs")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", p.path("templates/zero.hbs")).unwrap();
    std::os::unix::fs::symlink(&secret, p.path("sequences/leak.yaml")).unwrap();
    p.write(
        "templates/big.hbs",
        &format!("---\nsubject: Big\n---\n{}\n", "x".repeat(1024 * 1024)),
    );
    let cfg = std::fs::read_to_string(&p.config).unwrap().replace(
        "window = \"always\"",
        &format!(
            "window = \"always\"\ncontacts = \"{}\"",
            outside.path().join("leads.csv").display()
        ),
    );
    std::fs::write(&p.config, cfg).unwrap();
    let (code, text) = check_output(&p);
    assert_eq!(code, Some(1), "{text}");
    assert!(!text.contains("TOP-SECRET"), "file content echoed:\n{text}");
    for expected in [
        "templates/leak.hbs: error: cannot read: it leads outside the project folder",
        "templates/zero.hbs: error: cannot read: it leads outside the project folder (to /dev/zero)",
        "sequences/leak.yaml: error: cannot read: it leads outside the project folder",
        "templates/big.hbs: error: cannot read: larger than 1048576 bytes ([limits] max_file_size); refused",
        "error: cannot read the contacts CSV: it leads outside the project folder",
    ] {
        assert!(text.contains(expected), "expected\n{expected}\nin\n{text}");
    }

    // The limit is the project's to set; a device inside the project is not a file.
    let _ = std::fs::remove_file(p.path("templates/zero.hbs"));
    let _ = std::fs::remove_file(p.path("templates/leak.hbs"));
    let _ = std::fs::remove_file(p.path("templates/big.hbs"));
    let _ = std::fs::remove_file(p.path("sequences/leak.yaml"));
    let cfg = std::fs::read_to_string(&p.config).unwrap();
    let cfg = cfg
        .lines()
        .filter(|l| !l.starts_with("contacts ="))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(
        &p.config,
        format!("{cfg}\n\n[limits]\nmax_file_size = 100\n"),
    )
    .unwrap();
    let (code, text) = check_output(&p);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("templates/first.hbs: error: cannot read: larger than 100 bytes"),
        "{text}"
    );
}

#[test]
fn a_database_password_in_the_url_query_is_masked() {
    let p = Project::new(Db::Sqlite, &Options::default());
    let cfg = std::fs::read_to_string(&p.config).unwrap();
    let (_, rest) = cfg.split_once('\n').unwrap();
    std::fs::write(
        &p.config,
        format!(
            "database = \"postgres://127.0.0.1:1/db?user=rep&password=hunter2-secret\"\n{rest}"
        ),
    )
    .unwrap();
    let out = p.run(&["status"]);
    assert!(!out.status.success());
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(!text.contains("hunter2-secret"), "{text}");
    assert!(text.contains("password=***"), "{text}");
}

/// A PostgreSQL address where something accepts connections and never answers (a wrong
/// port, a half-dead server): a one-line error naming the database, without its
/// password, and exit code 2 within seconds, not after the pool's 30 s wait.
#[test]
fn a_silent_database_is_reported_within_seconds() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts and holds every connection, saying nothing.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            held.push(s);
        }
    });
    let p = Project::new(Db::Sqlite, &Options::default());
    let cfg = std::fs::read_to_string(&p.config).unwrap();
    let (_, rest) = cfg.split_once('\n').unwrap();
    std::fs::write(
        &p.config,
        format!("database = \"postgres://rep:hunter2-secret@127.0.0.1:{port}/db\"\n{rest}"),
    )
    .unwrap();
    let start = std::time::Instant::now();
    let out = p.run(&["status"]);
    let took = start.elapsed();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains(&format!("127.0.0.1:{port}/db")) && last.contains("no answer within 5 s"),
        "{err}"
    );
    assert!(!err.contains("hunter2-secret"), "{err}");
    // Loose for a busy machine; what it guards against is the 30 s it took before.
    assert!(took < std::time::Duration::from_secs(20), "took {took:?}");
}

/// Output into a pipe that is already closed (`followup preview … | head -0`): the
/// command ends quietly, with no panic and exit code 0, whichever command prints.
#[test]
fn a_closed_pipe_ends_quietly() {
    let p = Project::new(Db::Sqlite, &Options::default());
    let emails = p.import_contacts(1);
    for args in [
        vec!["preview", "intro", "--contact", emails[0].as_str()],
        vec!["simulate", "intro", "--contact", emails[0].as_str()],
        vec!["status"],
    ] {
        let mut child = p
            .cmd(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Closed before the command writes a byte.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(!err.contains("Broken pipe"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    }
}

/// Every argument of every command says what it is in `--help`.
#[test]
fn every_argument_in_help_says_what_it_is() {
    let p = Project::new(Db::Sqlite, &Options::default());
    let commands: &[&[&str]] = &[
        &[],
        &["init"],
        &["check"],
        &["run"],
        &["migrate"],
        &["reload"],
        &["backup"],
        &["restore"],
        &["contacts"],
        &["contacts", "import"],
        &["contacts", "show"],
        &["enroll"],
        &["unenroll"],
        &["pause"],
        &["resume"],
        &["suppress"],
        &["unsuppress"],
        &["classify"],
        &["preview"],
        &["simulate"],
        &["status"],
        &["in-doubt"],
        &["in-doubt", "release"],
        &["in-doubt", "drop"],
    ];
    for c in commands {
        let mut args = c.to_vec();
        args.push("--help");
        let out = p.run(&args);
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        for line in text.lines() {
            // An argument or option line: two spaces, then its name; its text follows.
            let Some(rest) = line.strip_prefix("  ") else {
                continue;
            };
            if rest.starts_with(' ') || rest.is_empty() {
                continue;
            }
            let name_only = rest.split_whitespace().all(|w| {
                w.starts_with('-') || w.starts_with('<') || w.starts_with('[') || w.ends_with(',')
            });
            assert!(
                !name_only,
                "{args:?}: no description for `{}`\n{text}",
                line.trim()
            );
        }
    }
}

/// A daemon on SQLite keeps its liveness lock and wire journal in `FILE.nodes/` beside
/// the database: `check` says when that folder cannot be made, naming it (in text and
/// JSON), and `run` stops with the same words rather than calling the database corrupt.
#[test]
fn check_names_a_lock_folder_that_cannot_be_made() {
    let p = Project::new(Db::Sqlite, &Options::default());
    let db = p.database.strip_prefix("sqlite://").unwrap().to_string();
    let nodes = format!("{db}.nodes");
    // A file where the folder goes: not even root can make a folder over it.
    std::fs::write(&nodes, "not a folder\n").unwrap();
    let said = format!("cannot create the folder of daemons' lock files {nodes}: ");
    let out = p.run(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(e.contains(&format!("error: {said}")), "{e}");
    assert!(e.contains("FILE.nodes"), "says what the folder is for: {e}");

    let out = p.run(&["check", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    let problems = v["problems"].as_array().unwrap();
    assert!(
        problems.iter().any(|d| d["severity"] == "error"
            && d["message"].as_str().unwrap_or_default().starts_with(&said)),
        "{v}"
    );

    let out = p.run(&["run", "--once"]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains(&said), "{e}");
    assert!(!e.contains("corrupt"), "{e}");
}

/// Several processes opening a new SQLite database at once (a daemon starting while an
/// operator runs `status`) migrate it one at a time: none fails on a table another
/// just created.
#[test]
fn concurrent_first_opens_of_a_sqlite_database_all_succeed() {
    let p = Project::new(Db::Sqlite, &Options::default());
    let children: Vec<_> = (0..6)
        .map(|_| {
            p.cmd(&["migrate"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
