//! Why a delivery failed, and which mail system said so: a fixed list of reasons read
//! from the enhanced status code (RFC 3463) and from the words of the notice, as
//! Sisimai's reason tables do, and the family of the MTA that wrote the notice.
//!
//! The reason decides the permanence of a bounce that carries no RFC 3463 code (old
//! Postfix, Exchange 2003, GroupWise, Domino, qmail, Yahoo, AOL...): "user unknown"
//! means the address is dead; "mailbox full", "try again later" or "expired in the
//! queue" mean it may work another day.

use std::sync::OnceLock;

use super::dsn::Code;
use super::lexicon::Lexicon;

/// Why delivery failed (the `bounce_reason` of `followup classify --json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BounceReason {
    /// The mailbox does not exist (X.1.1, "user unknown", "no such user").
    UserUnknown,
    /// The domain has no mail server or does not resolve (X.1.2, "host not found").
    HostUnknown,
    /// The mailbox is full (X.2.2).
    MailboxFull,
    /// The mailbox is over its quota.
    Quota,
    /// Refused for the address itself: relaying denied, account disabled or closed.
    Rejected,
    /// Refused as spam, or the sender is on a block list.
    SpamBlocked,
    /// Refused by a policy: authentication (SPF, DKIM, DMARC), greylisting, X.7.x.
    Policy,
    /// The MTA gave up after its retry period (X.4.7, "too long in the queue").
    Expired,
    /// The message is too big (X.2.3, X.3.4).
    TooLarge,
    /// A fault on the way: connection, system or protocol errors, loops.
    SystemError,
    /// The notice does not say.
    Unknown,
}

impl BounceReason {
    /// The serialized name (`user_unknown`, ...), for reasons and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            BounceReason::UserUnknown => "user_unknown",
            BounceReason::HostUnknown => "host_unknown",
            BounceReason::MailboxFull => "mailbox_full",
            BounceReason::Quota => "quota",
            BounceReason::Rejected => "rejected",
            BounceReason::SpamBlocked => "spam_blocked",
            BounceReason::Policy => "policy",
            BounceReason::Expired => "expired",
            BounceReason::TooLarge => "too_large",
            BounceReason::SystemError => "system_error",
            BounceReason::Unknown => "unknown",
        }
    }

    /// Whether this reason means the address will not work, for notices without an
    /// RFC 3463 code. None: the reason does not tell.
    pub fn permanent(self) -> Option<bool> {
        match self {
            BounceReason::UserUnknown
            | BounceReason::HostUnknown
            | BounceReason::Rejected
            | BounceReason::SpamBlocked
            | BounceReason::Policy => Some(true),
            BounceReason::MailboxFull
            | BounceReason::Quota
            | BounceReason::Expired
            | BounceReason::TooLarge => Some(false),
            // A fault on the way says nothing of the address: the code or the
            // notice's own words ("permanent", "try again") decide.
            BounceReason::SystemError | BounceReason::Unknown => None,
        }
    }

    /// How much a reason found in the text says: when a notice names several, the
    /// most specific wins ("message expired in queue: connection refused" expired).
    fn rank(self) -> u8 {
        match self {
            BounceReason::UserUnknown => 10,
            BounceReason::HostUnknown => 9,
            BounceReason::MailboxFull => 8,
            BounceReason::Quota => 7,
            BounceReason::TooLarge => 6,
            BounceReason::SpamBlocked => 5,
            BounceReason::Expired => 4,
            BounceReason::Policy => 3,
            BounceReason::Rejected => 2,
            BounceReason::SystemError => 1,
            BounceReason::Unknown => 0,
        }
    }
}

/// The family of the mail system that wrote a bounce (`mta` in the JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MtaFamily {
    Postfix,
    Exim,
    Sendmail,
    Qmail,
    Exchange,
    Gmail,
    Yahoo,
    Aol,
    AmazonSes,
    AmazonWorkmail,
    Groupwise,
    Domino,
    James,
    Courier,
    Interscan,
    Smtp32,
    ChineseProvider,
    JapaneseProvider,
    /// A delivery report or notice whose writer is not recognised.
    Other,
}

impl MtaFamily {
    /// The serialized name (`postfix`, `amazon_ses`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            MtaFamily::Postfix => "postfix",
            MtaFamily::Exim => "exim",
            MtaFamily::Sendmail => "sendmail",
            MtaFamily::Qmail => "qmail",
            MtaFamily::Exchange => "exchange",
            MtaFamily::Gmail => "gmail",
            MtaFamily::Yahoo => "yahoo",
            MtaFamily::Aol => "aol",
            MtaFamily::AmazonSes => "amazon_ses",
            MtaFamily::AmazonWorkmail => "amazon_workmail",
            MtaFamily::Groupwise => "groupwise",
            MtaFamily::Domino => "domino",
            MtaFamily::James => "james",
            MtaFamily::Courier => "courier",
            MtaFamily::Interscan => "interscan",
            MtaFamily::Smtp32 => "smtp32",
            MtaFamily::ChineseProvider => "chinese_provider",
            MtaFamily::JapaneseProvider => "japanese_provider",
            MtaFamily::Other => "other",
        }
    }
}

use BounceReason as R;

/// Phrases of failure notices and remote servers' replies (lower-cased), with the
/// reason each betrays. Written from the common MTA wordings (see the fixtures'
/// PROVENANCE.md), not copied from any other tool's tables.
static REASON_PHRASES: &[(&str, BounceReason)] = &[
    // The mailbox does not exist.
    ("user unknown", R::UserUnknown),
    ("unknown user", R::UserUnknown),
    ("no such user", R::UserUnknown),
    ("no such mailbox", R::UserUnknown),
    ("no such recipient", R::UserUnknown),
    ("no such address", R::UserUnknown),
    ("no mailbox here", R::UserUnknown),
    ("mailbox not found", R::UserUnknown),
    ("mailbox unavailable", R::UserUnknown),
    ("mailbox is unavailable", R::UserUnknown),
    ("mailbox does not exist", R::UserUnknown),
    ("mailbox doesn't exist", R::UserUnknown),
    ("address not found", R::UserUnknown),
    ("address does not exist", R::UserUnknown),
    ("account does not exist", R::UserUnknown),
    ("user does not exist", R::UserUnknown),
    ("user doesn't exist", R::UserUnknown),
    ("does not exist", R::UserUnknown),
    ("doesn't exist", R::UserUnknown),
    ("couldn't be found", R::UserUnknown),
    ("could not be found", R::UserUnknown),
    ("invalid recipient", R::UserUnknown),
    ("invalid mailbox", R::UserUnknown),
    ("invalid address", R::UserUnknown),
    ("recipient unknown", R::UserUnknown),
    ("unknown recipient", R::UserUnknown),
    ("recipient not found", R::UserUnknown),
    ("user not found", R::UserUnknown),
    ("account not found", R::UserUnknown),
    ("addressee unknown", R::UserUnknown),
    ("unknown address", R::UserUnknown),
    ("unknown local part", R::UserUnknown),
    ("unknown or illegal alias", R::UserUnknown),
    ("not a valid user", R::UserUnknown),
    ("not a valid mailbox", R::UserUnknown),
    ("is not a valid", R::UserUnknown),
    ("no valid recipients", R::UserUnknown),
    ("not listed in domino directory", R::UserUnknown),
    ("not listed in public name & address book", R::UserUnknown),
    ("recipient name is not recognized", R::UserUnknown),
    ("doesn't have a", R::UserUnknown),
    ("unknown in local recipient table", R::UserUnknown),
    ("unknown in virtual mailbox table", R::UserUnknown),
    ("unknown in virtual alias table", R::UserUnknown),
    ("unknown in relay recipient table", R::UserUnknown),
    ("no account by that name", R::UserUnknown),
    ("bad destination mailbox address", R::UserUnknown),
    ("recipientnotfound", R::UserUnknown),
    ("nosuchuser", R::UserUnknown),
    ("no such person", R::UserUnknown),
    ("not our customer", R::UserUnknown),
    ("user account is unavailable", R::UserUnknown),
    ("no longer valid", R::UserUnknown),
    ("invalid final delivery userid", R::UserUnknown),
    ("user not known", R::UserUnknown),
    ("does not have a final email delivery point", R::UserUnknown),
    ("no matches to nameserver query", R::UserUnknown),
    ("did not exactly match", R::UserUnknown),
    ("not been collected", R::Rejected),
    ("no longer available", R::UserUnknown),
    ("不存在", R::UserUnknown),
    ("地址无效", R::UserUnknown),
    ("无效的收件人", R::UserUnknown),
    ("存在しません", R::UserUnknown),
    ("宛先不明", R::UserUnknown),
    ("postfach existiert nicht", R::UserUnknown),
    ("unbekannter empfänger", R::UserUnknown),
    ("destinataire inconnu", R::UserUnknown),
    ("n'existe pas", R::UserUnknown),
    ("usuario desconocido", R::UserUnknown),
    ("no existe", R::UserUnknown),
    // The domain.
    ("host unknown", R::HostUnknown),
    ("unknown host", R::HostUnknown),
    ("host not found", R::HostUnknown),
    ("host or domain name not found", R::HostUnknown),
    ("domain not found", R::HostUnknown),
    ("domain name not found", R::HostUnknown),
    ("domain does not exist", R::HostUnknown),
    ("unrouteable address", R::HostUnknown),
    ("unroutable address", R::HostUnknown),
    ("name service error", R::HostUnknown),
    ("name or service not known", R::HostUnknown),
    ("no mx record", R::HostUnknown),
    ("mx lookup failed", R::HostUnknown),
    ("unrouteable mail domain", R::HostUnknown),
    ("could not find a gateway", R::HostUnknown),
    ("域名不存在", R::HostUnknown),
    // Full or over quota.
    ("mailbox full", R::MailboxFull),
    ("mailbox is full", R::MailboxFull),
    ("mailbox has exceeded", R::MailboxFull),
    ("mailbox exceeded", R::MailboxFull),
    ("mailbox size limit", R::MailboxFull),
    ("mailfolder is full", R::MailboxFull),
    ("mail box space not enough", R::MailboxFull),
    ("box space not enough", R::MailboxFull),
    ("inbox is full", R::MailboxFull),
    ("exceeded storage allocation", R::MailboxFull),
    ("insufficient storage", R::MailboxFull),
    ("out of storage", R::MailboxFull),
    ("boîte aux lettres est pleine", R::MailboxFull),
    ("boite aux lettres est pleine", R::MailboxFull),
    ("postfach ist voll", R::MailboxFull),
    ("buzón lleno", R::MailboxFull),
    ("buzón está lleno", R::MailboxFull),
    ("casella piena", R::MailboxFull),
    ("邮箱已满", R::MailboxFull),
    ("空间不足", R::MailboxFull),
    ("容量超過", R::MailboxFull),
    ("over quota", R::Quota),
    ("overquota", R::Quota),
    ("quota exceeded", R::Quota),
    ("exceeded quota", R::Quota),
    ("exceeds quota", R::Quota),
    ("over the allowed quota", R::Quota),
    ("is over quota", R::Quota),
    ("quota", R::Quota),
    ("超出配额", R::Quota),
    // Refused for the address.
    ("relay access denied", R::Rejected),
    ("relaying denied", R::Rejected),
    ("relay denied", R::Rejected),
    ("relay not permitted", R::Rejected),
    ("relaying not allowed", R::Rejected),
    ("not permitted to relay", R::Rejected),
    ("unable to relay", R::Rejected),
    ("we do not relay", R::Rejected),
    ("account has been disabled", R::Rejected),
    ("account is disabled", R::Rejected),
    ("account disabled", R::Rejected),
    ("disabled or discontinued", R::Rejected),
    ("account is inactive", R::Rejected),
    ("inactive account", R::Rejected),
    ("account has been suspended", R::Rejected),
    ("account suspended", R::Rejected),
    ("mailbox disabled", R::Rejected),
    ("account expired", R::Rejected),
    ("account closed", R::Rejected),
    ("has been closed", R::Rejected),
    ("recipient rejected", R::Rejected),
    ("address rejected", R::Rejected),
    ("not accepting mail", R::Rejected),
    ("does not accept mail", R::Rejected),
    ("no longer accepting", R::Rejected),
    ("access denied", R::Rejected),
    ("rejected", R::Rejected),
    ("账户已停用", R::Rejected),
    ("帐户已停用", R::Rejected),
    // Spam and block lists.
    ("spam", R::SpamBlocked),
    ("unsolicited", R::SpamBlocked),
    ("blacklist*", R::SpamBlocked),
    ("blocklist*", R::SpamBlocked),
    ("block list", R::SpamBlocked),
    ("spamhaus", R::SpamBlocked),
    ("junk mail", R::SpamBlocked),
    ("content filter*", R::SpamBlocked),
    ("垃圾邮件", R::SpamBlocked),
    // Policy.
    ("policy", R::Policy),
    ("dmarc", R::Policy),
    ("spf", R::Policy),
    ("dkim", R::Policy),
    ("not authorized", R::Policy),
    ("authentication required", R::Policy),
    ("sender denied", R::Policy),
    ("greylist*", R::Policy),
    ("graylist*", R::Policy),
    // Given up.
    ("expired", R::Expired),
    ("retry timeout exceeded", R::Expired),
    ("too long", R::Expired),
    ("in the queue too long", R::Expired),
    ("maximum delivery attempts", R::Expired),
    ("delivery time expired", R::Expired),
    ("could not be delivered for", R::Expired),
    ("not going to try again", R::Expired),
    ("attempts:", R::Expired),
    ("not reachable within the allowed queue period", R::Expired),
    // Too big.
    ("message too large", R::TooLarge),
    ("message is too large", R::TooLarge),
    ("message too big", R::TooLarge),
    ("message size exceeds", R::TooLarge),
    ("exceeds fixed maximum message size", R::TooLarge),
    ("exceeds the maximum size", R::TooLarge),
    ("message length exceeds", R::TooLarge),
    ("inbound message size", R::TooLarge),
    ("size limit exceeded", R::TooLarge),
    ("邮件过大", R::TooLarge),
    // On the way.
    ("connection timed out", R::SystemError),
    ("connection refused", R::SystemError),
    ("timed out", R::SystemError),
    ("temporary failure", R::SystemError),
    ("temporary system problem", R::SystemError),
    ("local error", R::SystemError),
    ("system error", R::SystemError),
    ("internal error", R::SystemError),
    ("temporarily unavailable", R::SystemError),
    ("service unavailable", R::SystemError),
    ("mail loop", R::SystemError),
    ("loop detected", R::SystemError),
    ("too many hops", R::SystemError),
    ("lost connection", R::SystemError),
    ("network error", R::SystemError),
    ("try again later", R::SystemError),
];

fn reason_phrases() -> &'static Lexicon<BounceReason> {
    static CELL: OnceLock<Lexicon<BounceReason>> = OnceLock::new();
    CELL.get_or_init(|| Lexicon::new(REASON_PHRASES))
}

/// The most specific reason the lower-cased text names, or Unknown.
pub(super) fn reason_in_text(low: &str) -> BounceReason {
    reason_phrases()
        .find_all(low)
        .into_iter()
        .map(|h| h.label)
        .max_by_key(|r| r.rank())
        .unwrap_or(BounceReason::Unknown)
}

/// The reason an RFC 3463 code names. `specific` is false for the catch-all codes
/// (X.0.0, X.1.0, X.5.x, X.7.1 ...), which the text may refine.
pub(super) fn reason_of_code(code: &Code) -> (BounceReason, bool) {
    match (code.subject, code.detail) {
        (1, 1 | 3 | 6 | 10) => (R::UserUnknown, true),
        (1, 2) => (R::HostUnknown, true),
        (1, _) => (R::Rejected, false),
        (2, 1) => (R::Rejected, true),
        (2, 2) => (R::MailboxFull, true),
        (2, 3) => (R::TooLarge, true),
        (2, _) => (R::Unknown, false),
        (3, 4) => (R::TooLarge, true),
        (3, _) => (R::SystemError, false),
        (4, 7) => (R::Expired, true),
        (4, 4) => (R::HostUnknown, false),
        (4, _) => (R::SystemError, false),
        (5, _) => (R::SystemError, false),
        (6, _) => (R::Rejected, false),
        (7, _) => (R::Policy, false),
        _ => (R::Unknown, false),
    }
}

/// The reason for one recipient: a specific status code first, then the words of its
/// own diagnostic or notice text, then the catch-all code's meaning.
pub(super) fn reason_for(code: Option<&Code>, low_text: &str) -> BounceReason {
    let from_code = code.map(reason_of_code);
    if let Some((r, true)) = from_code {
        return r;
    }
    match reason_in_text(low_text) {
        BounceReason::Unknown => from_code.map_or(BounceReason::Unknown, |(r, _)| r),
        // A 5.7.x code with "blocked as spam" words is spam; "rejected" alone under
        // a policy code stays policy.
        BounceReason::Rejected if from_code.is_some_and(|(r, _)| r == R::Policy) => R::Policy,
        r => r,
    }
}

use MtaFamily as M;

/// Signatures of the mail systems, in the lower-cased sender, subject and notice.
static MTA_SIGNATURES: &[(&str, MtaFamily)] = &[
    ("this is the mail system at host", M::Postfix),
    ("this is the postfix program", M::Postfix),
    ("the postfix program", M::Postfix),
    ("x-postfix", M::Postfix),
    (
        "this message was created automatically by mail delivery software",
        M::Exim,
    ),
    ("the following address(es) failed", M::Exim),
    (
        "this is a copy of the message, including all the headers",
        M::Exim,
    ),
    ("transcript of session follows", M::Sendmail),
    ("the original message was received at", M::Sendmail),
    ("had permanent fatal errors", M::Sendmail),
    ("this is the qmail-send program", M::Qmail),
    ("qmail-send", M::Qmail),
    ("below this line is a copy of the message", M::Qmail),
    ("msexch", M::Exchange),
    ("did not reach the following recipient", M::Exchange),
    (
        "did not reach some or all of the intended recipients",
        M::Exchange,
    ),
    (
        "delivery has failed to these recipients or groups",
        M::Exchange,
    ),
    ("your message couldn't be delivered", M::Exchange),
    ("resolver.adr", M::Exchange),
    ("microsoft exchange", M::Exchange),
    ("gsmtp", M::Gmail),
    ("googlemail.com", M::Gmail),
    (
        "mail delivery subsystem <mailer-daemon@googlemail.com>",
        M::Gmail,
    ),
    ("sorry, we were unable to deliver your message", M::Yahoo),
    ("yahoo.com", M::Yahoo),
    ("aol.com", M::Aol),
    ("amazonses", M::AmazonSes),
    ("awsapps", M::AmazonWorkmail),
    ("workmail", M::AmazonWorkmail),
    (
        "the message that you sent was undeliverable to the following",
        M::Groupwise,
    ),
    ("groupwise", M::Groupwise),
    ("domino directory", M::Domino),
    ("lotus", M::Domino),
    ("james mail server", M::James),
    ("courier mail server", M::Courier),
    ("interscan", M::Interscan),
    ("smtp32", M::Smtp32),
    ("coremail", M::ChineseProvider),
    ("系统退信", M::ChineseProvider),
    ("退信", M::ChineseProvider),
    ("配信できませんでした", M::JapaneseProvider),
    ("配信不能", M::JapaneseProvider),
];

fn mta_signatures() -> &'static Lexicon<MtaFamily> {
    static CELL: OnceLock<Lexicon<MtaFamily>> = OnceLock::new();
    CELL.get_or_init(|| Lexicon::new(MTA_SIGNATURES))
}

/// The first MTA signature in the given lower-cased texts, else Other.
pub(super) fn mta_family(texts: &[&str]) -> MtaFamily {
    texts
        .iter()
        .find_map(|t| mta_signatures().first(t).map(|h| h.label))
        .unwrap_or(MtaFamily::Other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_from_words() {
        assert_eq!(reason_in_text("550 user unknown"), R::UserUnknown);
        assert_eq!(
            reason_in_text("message expired in queue: connection refused"),
            R::Expired
        );
        assert_eq!(reason_in_text("552 mailbox full"), R::MailboxFull);
        assert_eq!(reason_in_text("all is well"), R::Unknown);
        assert_eq!(R::UserUnknown.permanent(), Some(true));
        assert_eq!(R::Quota.permanent(), Some(false));
        assert_eq!(
            mta_family(&["", "hi. this is the qmail-send program"]),
            M::Qmail
        );
    }
}
