//! What an arriving message does: classify it (pure), find the enrollments it concerns
//! (store lookups), decide each one's fate (pure engine), and record the message, the
//! effects and the folder checkpoint in one transaction. Used by the IMAP watcher;
//! independent of IMAP, so tests and `followup classify` can feed it raw messages.
//!
//! Matching, in order: In-Reply-To/References against our Message-IDs; then the
//! sender's address against contacts; for bounces the returned original's Message-ID
//! or the failed recipients. A reply from someone else at the contact's company (a
//! colleague answering, the contact in Cc) stops that company's contacts too, unless the
//! sequence says `stop_on_domain_reply: false`; never for free-mail domains.

use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use futures_util::FutureExt;
use serde_json::json;
use tracing::{info, warn};

use crate::config::Mailbox;
use crate::engine::{self, Inbound, ReplyIntent};
use crate::mail::classify::{self, Classification, Intent, Kind};
use crate::model::{CauseKind, EventKind};
use crate::model::{Contact, Enrollment};
use crate::project::Project;
use crate::store::{self, Checkpoint, InboundRecord, Store};

/// Which folder a message was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Folder {
    Inbox,
    Sent,
}

/// Free-mail domains: a reply from the same domain is no colleague.
const FREE_MAIL: &[&str] = &[
    "gmail.com",
    "googlemail.com",
    "outlook.com",
    "hotmail.com",
    "live.com",
    "msn.com",
    "yahoo.com",
    "yahoo.co.jp",
    "ymail.com",
    "icloud.com",
    "me.com",
    "mac.com",
    "aol.com",
    "gmx.de",
    "gmx.net",
    "web.de",
    "t-online.de",
    "mail.ru",
    "yandex.ru",
    "proton.me",
    "protonmail.com",
    "zoho.com",
    "qq.com",
    "foxmail.com",
    "163.com",
    "126.com",
    "yeah.net",
    "sina.com",
    "sina.cn",
    "sohu.com",
    "aliyun.com",
    "139.com",
    "189.cn",
    "naver.com",
    "daum.net",
    "orange.fr",
    "free.fr",
    "laposte.net",
    "libero.it",
    "virgilio.it",
    "uol.com.br",
    "bol.com.br",
    "terra.com.br",
];

pub fn is_free_mail(domain: &str) -> bool {
    FREE_MAIL.contains(&domain)
}

/// The outcome of handling one message, for logs and tests.
#[derive(Debug, Clone, PartialEq)]
pub struct Handled {
    pub classification: Classification,
    /// Enrollments changed.
    pub changed: Vec<i64>,
    pub decision: String,
    /// False when this Message-ID had been handled before in this folder.
    pub new: bool,
}

/// Addresses in To and Cc, lower-cased.
fn recipients(raw: &[u8]) -> Vec<String> {
    let Some(msg) = mail_parser::MessageParser::default().parse(raw) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for addr in [msg.to(), msg.cc()].into_iter().flatten() {
        for a in addr.iter() {
            if let Some(e) = a.address() {
                out.push(e.to_lowercase());
            }
        }
    }
    out
}

/// One message as found in a folder.
#[derive(Debug, Clone)]
pub struct Arrival<'a> {
    pub folder: Folder,
    /// The name recorded with checkpoints: "INBOX" or "Sent".
    pub folder_name: &'a str,
    pub uid: i64,
    /// The message, or its first bytes when it was too large to read whole (the
    /// watcher bounds what one message may take).
    pub raw: Arc<[u8]>,
    /// Where the folder stands once this message is recorded.
    pub checkpoint: Checkpoint,
}

/// Why a message could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
    /// Handling the message panicked: a bug, but one message must not stop the others.
    #[error("handling the message panicked: {0}")]
    Panicked(String),
}

impl Error {
    /// Whether retrying later may succeed whatever the message is (the database was
    /// unreachable), as opposed to a failure this message causes each time.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Store(e) => e.is_transient(),
            Error::Panicked(_) => false,
        }
    }
}

/// What is read from a message before any lookup. Pure and CPU-bound, so it runs on a
/// blocking thread: a crafted message must not stall the async workers that serve the
/// other watchers, the scheduler and the tracking endpoint.
struct Read {
    classification: Classification,
    /// To and Cc, for a message the rep sent by hand.
    recipients: Vec<String>,
}

async fn read(raw: Arc<[u8]>, folder: Folder, received: NaiveDate) -> Result<Read, Error> {
    tokio::task::spawn_blocking(move || Read {
        classification: classify::classify_at(&raw, received),
        recipients: if folder == Folder::Sent {
            recipients(&raw)
        } else {
            Vec::new()
        },
    })
    .await
    .map_err(|e| Error::Panicked(panic_text(e)))
}

fn panic_text(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => panic_message(p.as_ref()),
        Err(e) => e.to_string(),
    }
}

/// What a panic said, as text.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// How many times a message may fail to be handled before it is set aside.
pub const MAX_ATTEMPTS: i64 = 3;

/// How many times a message is decided again because an enrollment it changes moved
/// meanwhile. Each retry reads the new state, so more than a few means a writer that
/// never stops, which is a failure like any other.
const MAX_MOVED: u32 = 5;

/// What [`process`] did with a message.
#[derive(Debug)]
pub enum Processed {
    Handled(Box<Handled>),
    /// It failed; it will be tried again (after a pause) until [`MAX_ATTEMPTS`].
    Failed {
        attempts: i64,
        error: String,
    },
    /// It failed [`MAX_ATTEMPTS`] times: recorded with its error, the folder's
    /// checkpoint moved past it. `status` lists it.
    SetAside {
        attempts: i64,
        error: String,
    },
}

/// Handles a message, and keeps one that cannot be handled from stopping the messages
/// after it: each failure is counted in the database, and after [`MAX_ATTEMPTS`] the
/// message is set aside. A failure of the database itself (unreachable) is returned
/// as is: it says nothing about the message, and the caller retries later.
pub async fn process(
    project: &Project,
    store: &Store,
    mailbox: &Mailbox,
    a: Arrival<'_>,
    now: DateTime<Utc>,
) -> Result<Processed, Error> {
    let (folder_name, uid, checkpoint) = (a.folder_name, a.uid, a.checkpoint);
    // A panic anywhere in handling (not only in reading) is this message's failure.
    // An enrollment that moved while the message was handled (a send finished it) is
    // decided again on what is there now: the reply must still stop it.
    let mut outcome;
    let mut moved = 0;
    loop {
        outcome = AssertUnwindSafe(handle(project, store, mailbox, a.clone(), now))
            .catch_unwind()
            .await
            .unwrap_or_else(|p| Err(Error::Panicked(panic_message(p.as_ref()))));
        match outcome {
            Err(Error::Store(store::Error::Moved)) if moved < MAX_MOVED => moved += 1,
            _ => break,
        }
    }
    let e = match outcome {
        Ok(h) => return Ok(Processed::Handled(Box::new(h))),
        Err(e) if e.is_transient() => return Err(e),
        Err(e) => e,
    };
    let error = e.to_string();
    let attempts = store
        .count_inbound_failure(
            &mailbox.name,
            folder_name,
            checkpoint.uidvalidity,
            uid,
            &error,
            now,
        )
        .await?;
    if attempts < MAX_ATTEMPTS {
        warn!(mailbox = %mailbox.name, folder = folder_name, uid, attempts, error = %error, "inbound: could not handle the message; will try again");
        return Ok(Processed::Failed { attempts, error });
    }
    store
        .set_aside(&mailbox.name, folder_name, checkpoint, now)
        .await?;
    warn!(mailbox = %mailbox.name, folder = folder_name, uid, attempts, error = %error, "inbound: message set aside after repeated failures; going on with the next (see `followup status`)");
    Ok(Processed::SetAside { attempts, error })
}

/// Handles one message that arrived in a folder of `mailbox`.
pub async fn handle(
    project: &Project,
    store: &Store,
    mailbox: &Mailbox,
    a: Arrival<'_>,
    now: DateTime<Utc>,
) -> Result<Handled, Error> {
    let Arrival {
        folder,
        folder_name,
        uid,
        raw,
        checkpoint,
    } = a;
    let Read {
        classification: c,
        recipients: to,
    } = read(raw, folder, now.date_naive()).await?;
    let message_id = c
        .message_id
        .clone()
        .unwrap_or_else(|| format!("<uid-{uid}-{}@{}>", checkpoint.uidvalidity, folder_name));
    // A hard bounce counts towards the mailbox's bounce rate, checked once recorded.
    let mut hard_bounce = false;
    let mut record = InboundRecord {
        mailbox: mailbox.name.clone(),
        folder: folder_name.to_string(),
        uid,
        message_id: message_id.clone(),
        kind: kind_name(&c.kind).to_string(),
        from: c.from.clone(),
        ..InboundRecord::default()
    };
    let data = json!({
        "message_id": message_id,
        "from": c.from,
        "subject": c.subject,
        "snippet": c.snippet,
        "reason": c.reason,
    });
    let own_address = mailbox.from.email.to_string().to_lowercase();
    let ours = !store
        .our_messages(std::slice::from_ref(&message_id))
        .await?
        .is_empty();

    let mut targets: Vec<(Enrollment, Inbound)> = Vec::new();
    let decision: String;
    if ours {
        // Our own follow-up, seen in Sent (or copied into the inbox): never a reply.
        decision = "our own message".into();
    } else if folder == Folder::Sent {
        // The rep wrote by hand: to an enrolled contact (To/Cc), or in one of our threads.
        let mut contacts = store.contacts_by_email(&to).await?;
        for (_, _, cid) in store.our_messages(&c.references).await? {
            if !contacts.iter().any(|x| x.id == cid) {
                contacts.extend(store.contacts_by_id(&[cid]).await?);
            }
        }
        let live = store
            .live_enrollments(&contacts.iter().map(|x| x.id).collect::<Vec<_>>())
            .await?;
        decision = if live.is_empty() {
            "sent by hand, to nobody enrolled".into()
        } else {
            format!("sent by hand to {}", emails(&live))
        };
        targets.extend(live.into_iter().map(|e| (e, Inbound::Manual)));
    } else {
        match c.kind {
            Kind::Reply | Kind::AutoReply => {
                if c.from.as_deref() == Some(own_address.as_str()) {
                    decision = "from our own address".into();
                } else {
                    let contacts = sender_contacts(store, &c).await?;
                    let intent = match c.intent {
                        Some(Intent::Unsubscribe) => ReplyIntent::Unsubscribe,
                        Some(Intent::Declined) => ReplyIntent::Declined,
                        _ => ReplyIntent::Reply,
                    };
                    let live = store
                        .live_enrollments(&contacts.iter().map(|x| x.id).collect::<Vec<_>>())
                        .await?;
                    if c.kind == Kind::AutoReply {
                        for e in live {
                            let contact = contacts.iter().find(|x| x.id == e.contact_id);
                            let tz = contact_tz(project, contact);
                            let until = engine::pause_until(
                                c.return_date,
                                tz,
                                now,
                                project.config.replies.default_pause,
                            );
                            targets.push((e, Inbound::AutoReply { until }));
                        }
                        decision = match c.return_date {
                            Some(d) => format!("auto-reply: back on {d}"),
                            None => "auto-reply: no return date, default pause".into(),
                        };
                    } else {
                        if intent == ReplyIntent::Unsubscribe {
                            for x in &contacts {
                                record
                                    .suppress
                                    .push((x.email.clone(), "unsubscribed".into()));
                            }
                        }
                        targets.extend(live.into_iter().map(|e| {
                            (
                                e,
                                Inbound::Reply {
                                    intent,
                                    colleague: false,
                                },
                            )
                        }));
                        // A colleague at the same company.
                        let mut colleague_stops = Vec::new();
                        if let Some(from) = &c.from {
                            let domain = store::domain_of(from);
                            if !domain.is_empty()
                                && !is_free_mail(&domain)
                                && domain != store::domain_of(&own_address)
                            {
                                let at_domain = store.contacts_at_domain(&domain).await?;
                                let others: Vec<i64> = at_domain
                                    .iter()
                                    .filter(|x| !contacts.iter().any(|y| y.id == x.id))
                                    .map(|x| x.id)
                                    .collect();
                                for e in store.live_enrollments(&others).await? {
                                    if project
                                        .sequence(&e.sequence)
                                        .is_none_or(|s| s.stop_on_domain_reply)
                                    {
                                        colleague_stops.push(e);
                                    }
                                }
                            }
                        }
                        targets.extend(colleague_stops.into_iter().map(|e| {
                            (
                                e,
                                Inbound::Reply {
                                    intent: ReplyIntent::Reply,
                                    colleague: true,
                                },
                            )
                        }));
                        decision = format!(
                            "{}: {}",
                            match intent {
                                ReplyIntent::Reply => "reply",
                                ReplyIntent::Declined => "declined",
                                ReplyIntent::Unsubscribe => "unsubscribe",
                            },
                            c.reason
                        );
                    }
                    record.contact_id = contacts.first().map(|x| x.id);
                }
            }
            Kind::Bounce | Kind::Complaint => {
                let mut contacts = store.contacts_by_email(&c.recipients).await?;
                for (_, _, cid) in store.our_messages(&c.references).await? {
                    if !contacts.iter().any(|x| x.id == cid) {
                        contacts.extend(store.contacts_by_id(&[cid]).await?);
                    }
                }
                let live = store
                    .live_enrollments(&contacts.iter().map(|x| x.id).collect::<Vec<_>>())
                    .await?;
                // The cause is both the suppression's reason and the enrollments' stop.
                let suppress_cause = if c.kind == Kind::Complaint {
                    Some(CauseKind::Complained)
                } else if c.permanent == Some(true) {
                    Some(CauseKind::Bounced)
                } else {
                    None
                };
                match suppress_cause {
                    Some(cause) => {
                        hard_bounce = cause == CauseKind::Bounced;
                        for x in &contacts {
                            record
                                .suppress
                                .push((x.email.clone(), cause.as_str().to_string()));
                        }
                        targets
                            .extend(live.into_iter().map(|e| (e, Inbound::Suppressed { cause })));
                        decision = format!("{cause}: {}", c.reason);
                    }
                    None => {
                        // A temporary failure: counted; suppressed after too many.
                        let limit = project.config.replies.soft_bounce_limit as i64;
                        let mut suppressed = Vec::new();
                        for x in &contacts {
                            record.soft_bounces.push(x.id);
                            if store.soft_bounces(x.id).await? + 1 >= limit {
                                record
                                    .suppress
                                    .push((x.email.clone(), format!("{limit} soft bounces")));
                                suppressed.push(x.id);
                            }
                        }
                        targets.extend(
                            live.into_iter()
                                .filter(|e| suppressed.contains(&e.contact_id))
                                .map(|e| {
                                    (
                                        e,
                                        Inbound::Suppressed {
                                            cause: CauseKind::Bounced,
                                        },
                                    )
                                }),
                        );
                        decision = format!("temporary bounce: {}", c.reason);
                    }
                }
                // Soft bounces leave the enrollments alone: record them on the contact.
                if suppress_cause.is_none() {
                    for x in &contacts {
                        record.events.push(crate::model::NewEvent {
                            contact_id: Some(x.id),
                            enrollment_id: None,
                            message_id: None,
                            kind: EventKind::SoftBounced,
                            data: json!({ "status": c.status, "bounce_reason": c.bounce_reason, "reason": c.reason, "message_id": message_id }),
                        });
                    }
                }
                record.contact_id = contacts.first().map(|x| x.id);
            }
            Kind::Unrelated => decision = format!("unrelated: {}", c.reason),
        }
    }

    let last_sent = store
        .last_sent_messages(&targets.iter().map(|(e, _)| e.id).collect::<Vec<_>>())
        .await?;
    let mut changed = Vec::new();
    let mut seen = BTreeSet::new();
    for (e, inbound) in &targets {
        if !seen.insert(e.id) {
            continue;
        }
        let input = engine::Input::Inbound {
            inbound: inbound.clone(),
            data: data.clone(),
        };
        // Inbound input is never refused: it applies to a live enrollment or not at all.
        if let Ok(Some(tr)) = engine::step(engine::Scope::Nothing, e, &input, now) {
            changed.push(e.id);
            record.updates.push(tr.enrollment);
            // Counted against the step whose mail was answered.
            let message = last_sent.get(&e.id).copied();
            record.events.extend(tr.events.into_iter().map(|mut ev| {
                ev.message_id = ev.message_id.or(message);
                ev
            }));
        }
    }
    record.enrollment_id = changed.first().copied();
    record.decision = decision.clone();
    let new = store.record_inbound(&record, checkpoint, now).await?;
    // Lifecycle rules (`on_reply`) follow from the events just committed, through the
    // rules runner's cursor: none is lost if the daemon dies now.
    if new && hard_bounce {
        check_bounce_rate(project, store, mailbox, now).await?;
    }
    if new {
        if changed.is_empty() {
            info!(mailbox = %mailbox.name, folder = folder_name, %message_id, kind = kind_name(&c.kind), decision = %decision, "inbound: no enrollment changed");
        } else {
            info!(mailbox = %mailbox.name, folder = folder_name, %message_id, kind = kind_name(&c.kind), decision = %decision, enrollments = ?changed, "inbound: enrollments changed");
        }
    } else {
        warn!(mailbox = %mailbox.name, %message_id, "inbound: already handled (UIDVALIDITY changed or re-delivered); skipped");
    }
    Ok(Handled {
        classification: c,
        changed: if new { changed } else { Vec::new() },
        decision,
        new,
    })
}

/// Pauses a mailbox whose recent sends bounce too much, before it ruins the sender's
/// reputation. Judged once it has sent at least a fifth of the window (a single bounce
/// among the first few sends is no pattern).
async fn check_bounce_rate(
    project: &Project,
    store: &Store,
    mailbox: &Mailbox,
    now: DateTime<Utc>,
) -> Result<(), store::Error> {
    let r = &project.config.replies;
    let (sent, bounced) = store.recent_bounces(&mailbox.name, r.bounce_window).await?;
    if sent < (r.bounce_window as i64 / 5).max(1) {
        return Ok(());
    }
    let rate = bounced as f64 / sent as f64;
    if rate > r.bounce_max_rate {
        let reason = format!(
            "{bounced} of its last {sent} sends bounced ({:.1}% > {:.1}%); check the list, then `followup resume --mailbox {}`",
            rate * 100.0,
            r.bounce_max_rate * 100.0,
            mailbox.name
        );
        if store.pause_mailbox(&mailbox.name, &reason, now).await? {
            warn!(mailbox = %mailbox.name, "mailbox paused: {reason}");
        }
    }
    Ok(())
}

/// Contacts a reply is from: by the Message-IDs it refers to, else by the sender.
async fn sender_contacts(store: &Store, c: &Classification) -> Result<Vec<Contact>, store::Error> {
    let ids: Vec<i64> = store
        .our_messages(&c.references)
        .await?
        .into_iter()
        .map(|(_, _, cid)| cid)
        .collect();
    let mut contacts = store.contacts_by_id(&ids).await?;
    if let Some(from) = &c.from {
        for x in store.contacts_by_email(std::slice::from_ref(from)).await? {
            if !contacts.iter().any(|y| y.id == x.id) {
                contacts.push(x);
            }
        }
    }
    Ok(contacts)
}

fn contact_tz(project: &Project, c: Option<&Contact>) -> Tz {
    c.and_then(|c| c.timezone.as_deref())
        .and_then(|t| t.parse().ok())
        .unwrap_or(project.config.timezone)
}

fn emails(list: &[Enrollment]) -> String {
    let set: BTreeSet<&str> = list.iter().map(|e| e.email.as_str()).collect();
    set.into_iter().collect::<Vec<_>>().join(", ")
}

pub fn kind_name(k: &Kind) -> &'static str {
    k.as_str()
}

/// A message a watcher found, handed over on the arrivals channel with the way to
/// answer it: the watcher moves its checkpoint only once the answer says the message
/// was handled or set aside.
#[derive(Debug)]
pub struct Delivered {
    /// The mailbox's name in `followup.toml`.
    pub mailbox: String,
    pub folder: Folder,
    pub uid: i64,
    pub raw: Arc<[u8]>,
    pub checkpoint: Checkpoint,
    pub done: tokio::sync::oneshot::Sender<Result<Processed, Error>>,
}

/// Where watchers send what they find. The IMAP adapter knows only this; what an
/// arrival does is decided by [`serve`], which the daemon wires to it.
pub type Arrivals = tokio::sync::mpsc::Sender<Delivered>;

/// Handles arrivals until every sender is gone, each in a task of its own (one slow
/// message must not hold up another mailbox's replies).
pub async fn serve(
    project: Arc<Project>,
    store: Store,
    mut arrivals: tokio::sync::mpsc::Receiver<Delivered>,
) {
    while let Some(d) = arrivals.recv().await {
        let (project, store) = (project.clone(), store.clone());
        tokio::spawn(async move {
            let Some(mailbox) = project.config.mailboxes.get(&d.mailbox) else {
                warn!(mailbox = %d.mailbox, "an arrival for a mailbox that is no longer configured");
                return;
            };
            let folder_name = match d.folder {
                Folder::Inbox => "INBOX",
                Folder::Sent => "Sent",
            };
            let a = Arrival {
                folder: d.folder,
                folder_name,
                uid: d.uid,
                raw: d.raw,
                checkpoint: d.checkpoint,
            };
            let outcome = process(&project, &store, mailbox, a, Utc::now()).await;
            // The watcher may have stopped meanwhile; then nobody waits for the answer.
            let _ = d.done.send(outcome);
        });
    }
}
