//! Tells opens and clicks made by machines from those made by people, purely.
//!
//! A large share of what reaches `/o/{token}` and `/c/{token}` never had a person behind
//! it: Apple Mail Privacy Protection downloads every image of every message as soon as a
//! device syncs it; corporate mail gateways (Microsoft Defender Safe Links, Mimecast,
//! Proofpoint, Barracuda, ...) follow every link before the recipient sees the message;
//! chat apps and crawlers fetch links to draw previews. If those hits counted, a step
//! meant for "opened but did not answer" would go to people who never looked, and a
//! branch on "clicked the pricing link" would fire on a virus scanner. So such hits are
//! still recorded (they prove delivery, and the totals stay honest) but carry a
//! [`Reason`], and only unlabelled hits drive branches and rules.
//!
//! [`classify`] looks at one hit on its own and checks, most specific first:
//!
//! 1. the hidden honeypot link, which no person can see or click;
//! 2. `HEAD` requests: link checkers probe with `HEAD`, browsers navigate with `GET`;
//! 3. known image proxies and Office's own link checks, by user agent or address;
//! 4. user agents that only programs send (HTTP libraries, headless browsers, crawlers,
//!    security gateways, link previewers), and a missing user agent;
//! 5. timing: an open or click too soon after the message was handed to SMTP for a
//!    person to have read it.
//!
//! [`Bursts`] adds the one signal a single hit cannot carry: several links of the same
//! message followed within a few seconds, which is how gateways scan and not how people
//! read. Many scanners send a current browser's user agent from a cloud address, so
//! the honeypot, timing and bursts are what catches them; no list of names will.
//!
//! This is a heuristic on what the request says about itself, tuned to label too little
//! rather than too much: a person's open taken for a machine's is a lost signal, but a
//! machine's taken for a person's sends follow-ups on a false premise, and both are
//! worse when they happen often. Everything here is deterministic and needs no network
//! (no reverse DNS, no IP reputation lists), so the same request always gets the same
//! label, in tests and on every instance.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};

/// What was requested: the pixel or a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HitKind {
    Open,
    Click,
}

/// One request to the tracking endpoint, as the recorder knows it.
#[derive(Debug, Clone, Copy)]
pub struct Hit<'a> {
    pub kind: HitKind,
    pub at: DateTime<Utc>,
    /// true for HEAD requests (scanners probe links with HEAD; browsers use GET)
    pub head: bool,
    pub user_agent: Option<&'a str>,
    pub ip: Option<IpAddr>,
    /// when the message was handed to SMTP (None if unknown)
    pub sent_at: Option<DateTime<Utc>>,
    /// the click was on the hidden honeypot link that no person can see
    pub honeypot: bool,
}

/// Why a hit is from a machine.
///
/// `as_str()` is the label stored in the database and shown by `status`: it is stable,
/// so never rename one (add a new variant instead). `describe()` is a sentence for
/// `contacts show`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The click was on the hidden honeypot link.
    HoneypotLink,
    /// A `HEAD` request.
    HeadRequest,
    /// Apple Mail Privacy Protection: the bare `Mozilla/5.0` user agent of Apple's
    /// image proxy, or an open from Apple's own 17.0.0.0/8.
    ApplePrivacyProxy,
    /// Gmail's image proxy. It fetches when the person opens the message, so this is
    /// usually a real open seen through a proxy: see [`Reason::on_behalf_of_person`].
    GoogleImageProxy,
    /// Yahoo's (and AOL's) image proxy; like Gmail's, it usually fetches on an open.
    YahooProxy,
    /// Microsoft Office checking a link before handing it to the browser (the person's
    /// browser then makes its own request, which is the click that counts).
    OfficeLinkCheck,
    /// A user agent that only programs send: HTTP libraries, headless browsers,
    /// crawlers, mail security gateways, link previewers.
    ScannerUserAgent,
    /// No user agent at all; every browser and mail client sends one.
    NoUserAgent,
    /// Sooner after the message was handed to SMTP than a person could read it.
    TooSoonAfterDelivery,
    /// Several links of the message followed within seconds (see [`Bursts`]).
    AllLinksAtOnce,
}

impl Reason {
    /// Every reason, in the order [`classify`] checks them.
    pub const ALL: [Reason; 10] = [
        Reason::HoneypotLink,
        Reason::HeadRequest,
        Reason::ApplePrivacyProxy,
        Reason::GoogleImageProxy,
        Reason::YahooProxy,
        Reason::OfficeLinkCheck,
        Reason::ScannerUserAgent,
        Reason::NoUserAgent,
        Reason::TooSoonAfterDelivery,
        Reason::AllLinksAtOnce,
    ];

    /// The stable snake_case label stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::HoneypotLink => "honeypot_link",
            Reason::HeadRequest => "head_request",
            Reason::ApplePrivacyProxy => "apple_privacy_proxy",
            Reason::GoogleImageProxy => "google_image_proxy",
            Reason::YahooProxy => "yahoo_proxy",
            Reason::OfficeLinkCheck => "office_link_check",
            Reason::ScannerUserAgent => "scanner_user_agent",
            Reason::NoUserAgent => "no_user_agent",
            Reason::TooSoonAfterDelivery => "too_soon_after_delivery",
            Reason::AllLinksAtOnce => "all_links_at_once",
        }
    }

    /// A short English sentence for `contacts show`.
    pub fn describe(self) -> &'static str {
        match self {
            Reason::HoneypotLink => "Followed the hidden link that no person can see.",
            Reason::HeadRequest => "Probed the link with a HEAD request, as link checkers do.",
            Reason::ApplePrivacyProxy => {
                "Fetched by Apple Mail Privacy Protection, which loads images on delivery."
            }
            Reason::GoogleImageProxy => {
                "Fetched by Gmail's image proxy; usually the person opened it in Gmail."
            }
            Reason::YahooProxy => {
                "Fetched by Yahoo's image proxy; usually the person opened it in Yahoo Mail."
            }
            Reason::OfficeLinkCheck => {
                "Checked by Microsoft Office before it opened the link in a browser."
            }
            Reason::ScannerUserAgent => {
                "Sent by a program (scanner, crawler, link preview), by its user agent."
            }
            Reason::NoUserAgent => "Sent without a user agent, which browsers always send.",
            Reason::TooSoonAfterDelivery => {
                "Came seconds after sending, sooner than a person could have read it."
            }
            Reason::AllLinksAtOnce => {
                "Several links were followed within seconds, as mail scanners do."
            }
        }
    }

    /// True for webmail image proxies that fetch when, and because, a person opens the
    /// message (Gmail, Yahoo): the open is real, only its address and device are hidden.
    /// Such hits are labelled all the same, so that figures through proxies stay
    /// visible and the rule "machine hits never drive branches" has no exception; a
    /// caller that wants to count them as human opens can ask this.
    pub fn on_behalf_of_person(self) -> bool {
        matches!(self, Reason::GoogleImageProxy | Reason::YahooProxy)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored label that names no [`Reason`] (written by a newer version, or damaged).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown machine-hit reason {0:?}")]
pub struct UnknownReason(pub String);

impl FromStr for Reason {
    type Err = UnknownReason;

    fn from_str(s: &str) -> Result<Reason, UnknownReason> {
        Reason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownReason(s.to_string()))
    }
}

/// An open sooner than this after the hand-off to SMTP is a prefetch. Delivery alone
/// (relay, the recipient's server, the client's sync) takes about a second even on a
/// fast path, and a person then has to see the message and open it; gateways and
/// prefetchers that load images on arrival do it within that second. Kept short on
/// purpose: someone watching their inbox does open a mail a few seconds after it
/// arrives, and Apple's prefetch, which comes later, is told by its user agent instead.
pub const OPEN_TOO_SOON: Duration = Duration::seconds(2);

/// A click sooner than this after the hand-off to SMTP is a scanner. A person has to
/// receive, open and read the message, then find and click the link, which takes
/// longer even for a two-line mail; Safe Links and other gateways follow every link
/// within a few seconds of arrival, before the message reaches the inbox.
pub const CLICK_TOO_SOON: Duration = Duration::seconds(10);

/// How far a hit may seem to come *before* its message was sent and still be judged by
/// timing. Instances sharing a PostgreSQL database each use their own clock, so a fast
/// scanner's hit served by one instance can be stamped a little before the `sent_at`
/// written by another; that is "immediately after sending". A hit much earlier than
/// the send means the clocks or `sent_at` are wrong, and then timing says nothing.
pub const CLOCK_SKEW: Duration = Duration::minutes(5);

/// Decides whether one hit is from a machine: `Some(reason)` if so, `None` if it looks
/// like a person. See the module documentation for the order of the checks.
///
/// Timing is measured from the hand-off to SMTP, not from delivery, which nobody
/// reports: a message held in a queue (greylisting, a slow relay) reaches a gateway
/// later, and its scan then passes the timing test. The honeypot and [`Bursts`] are
/// there for those.
pub fn classify(hit: &Hit<'_>) -> Option<Reason> {
    if hit.honeypot {
        return Some(Reason::HoneypotLink);
    }
    if hit.head {
        return Some(Reason::HeadRequest);
    }
    // Matching is case-insensitive: the same products appear as "Barracuda",
    // "barracuda" and "BARRACUDA" across versions.
    let ua = user_agent(hit.user_agent).map(str::to_ascii_lowercase);
    if let Some(proxy) = proxy(hit.kind, ua.as_deref(), hit.ip) {
        // Gmail and Yahoo normally fetch on an open, but they also prefetch some
        // messages on arrival; then timing is the better description of the hit.
        if proxy.on_behalf_of_person() && too_soon(hit) {
            return Some(Reason::TooSoonAfterDelivery);
        }
        return Some(proxy);
    }
    let Some(ua) = ua else {
        return Some(Reason::NoUserAgent);
    };
    if is_bare(&ua) || is_program(&ua) {
        return Some(Reason::ScannerUserAgent);
    }
    too_soon(hit).then_some(Reason::TooSoonAfterDelivery)
}

/// The user agent if it says anything: a missing header, an empty one and one with no
/// letter at all ("-", as some proxies fill in) all name no client.
fn user_agent(ua: Option<&str>) -> Option<&str> {
    ua.map(str::trim)
        .filter(|ua| ua.bytes().any(|b| b.is_ascii_alphabetic()))
}

/// Apple's image proxy sends just this, with no platform or engine details; no browser
/// or mail client does.
fn is_bare(ua: &str) -> bool {
    ua == "mozilla/5.0"
}

/// Image proxies and Office's link checks; `ua` is lowercase.
fn proxy(kind: HitKind, ua: Option<&str>, ip: Option<IpAddr>) -> Option<Reason> {
    if let Some(ua) = ua {
        // "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com
        // GoogleImageProxy)".
        if ua.contains("googleimageproxy") {
            return Some(Reason::GoogleImageProxy);
        }
        // "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html".
        if ua.contains("yahoomailproxy") {
            return Some(Reason::YahooProxy);
        }
        match kind {
            // Apple's proxy fetches images, never links; a bare "Mozilla/5.0" on a
            // link is some other program (classify labels it a scanner).
            HitKind::Open if is_bare(ua) => return Some(Reason::ApplePrivacyProxy),
            // Outlook and the other Office programs check a link themselves before
            // opening it in the browser ("Microsoft Office Existence Discovery",
            // "Microsoft Office Protocol Discovery", "...; ms-office; MSOffice 16)").
            // The person's browser then requests the link with its own user agent, so
            // a click in Office's name is never the one to count. On the pixel the
            // same names are Outlook desktop showing the message to its user, which is
            // a person's open and stays unlabelled.
            HitKind::Click if ua.contains("ms-office") || ua.contains("microsoft office") => {
                return Some(Reason::OfficeLinkCheck)
            }
            _ => {}
        }
    }
    // Apple's proxies fetch from Apple's own 17.0.0.0/8, among others: the rest of
    // their egress is on Cloudflare and Akamai addresses shared with everything else,
    // and is not told apart here (the bare user agent above catches most of it). Only
    // opens: Apple's staff browse from 17.0.0.0/8 too, and their clicks are theirs.
    if kind == HitKind::Open && ip.is_some_and(is_apple) {
        return Some(Reason::ApplePrivacyProxy);
    }
    None
}

fn is_apple(ip: IpAddr) -> bool {
    let v4 = match ip {
        IpAddr::V4(v4) => v4,
        // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d.
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4,
            None => return false,
        },
    };
    v4.octets()[0] == 17
}

/// Lowercase fragments found only in the user agents of programs. Each is specific
/// enough not to occur in a browser's or mail client's user agent; generic words
/// ("bot", "crawler", ...) are matched as word endings in [`is_program`] instead.
const PROGRAM_MARKS: &[&str] = &[
    // HTTP libraries and command-line tools.
    "python-requests",
    "python-urllib",
    "aiohttp",
    "curl/",
    "wget",
    "go-http-client",
    "java/",
    "okhttp",
    "libwww-perl",
    "apache-httpclient",
    "node-fetch",
    "axios/",
    "ahc/",
    // Headless browsers, which scanners drive to render a page.
    "headlesschrome",
    "phantomjs",
    // Mail and web security gateways that name themselves.
    "barracuda",
    "mimecast",
    "proofpoint",
    "symantec",
    "forcepoint",
    "trendmicro",
    "trend micro",
    "sophos",
    "zscaler",
    "paloalto",
    "palo alto",
    "checkpoint",
    "check point",
    "fortiguard",
    "cisco",
    "ironport",
    // Link previews in chat and social apps (their bots end in "bot" and are caught
    // below; these do not).
    "facebookexternalhit",
    "skypeuripreview",
    "microsoftpreview",
    "bingpreview",
    // A frozen Edge 12 user agent from 2015, still sent today by a mail provider's
    // prefetcher within seconds of delivery; no person runs that browser any more.
    "chrome/42.0.2311.135 safari/537.36 edge/12.246",
];

/// Words of a user agent that end like a program's name ("Googlebot", "Slackbot-...",
/// "LinkedInBot", "Baiduspider", "...Crawler") without being one.
const NOT_PROGRAMS: &[&str] = &[
    // Cubot is a phone maker: "Android 10; CUBOT_X30" is a person on their phone.
    "cubot",
];

const PROGRAM_WORD_ENDINGS: &[&str] = &["bot", "crawler", "spider", "scanner"];

/// Whether a (lowercase) user agent is a program's. Generic words are matched as the
/// end of a whole word, never as any substring: "bot" must catch "Googlebot" but not a
/// word that merely contains those letters, and not the phone brand Cubot.
fn is_program(ua: &str) -> bool {
    if PROGRAM_MARKS.iter().any(|m| ua.contains(m)) {
        return true;
    }
    ua.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !NOT_PROGRAMS.contains(w))
        .any(|w| PROGRAM_WORD_ENDINGS.iter().any(|e| w.ends_with(e)))
}

/// Whether the hit came too soon after the send for a person (see [`OPEN_TOO_SOON`],
/// [`CLICK_TOO_SOON`], [`CLOCK_SKEW`]). Exactly at the threshold counts as a person.
fn too_soon(hit: &Hit<'_>) -> bool {
    let Some(sent) = hit.sent_at else {
        return false;
    };
    let limit = match hit.kind {
        HitKind::Open => OPEN_TOO_SOON,
        HitKind::Click => CLICK_TOO_SOON,
    };
    let elapsed = hit.at.signed_duration_since(sent);
    -CLOCK_SKEW <= elapsed && elapsed < limit
}

/// The burst window [`Bursts::default`] uses. Gateways fetch every link of a message
/// within a second or two; five seconds leaves room for one that fetches one link at a
/// time and follows each redirect to a slow site. A person following three different
/// links of a sales email within five seconds, or both links of a two-link one, is
/// rare enough that labelling it costs less than letting scans through.
pub const BURST_WINDOW: Duration = Duration::seconds(5);

/// How many messages [`Bursts::default`] remembers. A burst lasts seconds, so only the
/// messages clicked in the last few seconds matter; ten thousand of them is far above
/// what a small team's sending produces, and costs a few MiB at worst.
pub const BURST_CAPACITY: usize = 10_000;

/// Distinct links that make a burst in a message of three or more links. One link
/// followed twice is a person (or a double-click); two different links within seconds
/// can be a quick person; three is how scanners behave.
pub const BURST_LINKS: usize = 3;

/// Clicks kept per message. Only clicks within a window of the newest are kept anyway;
/// this bounds a message that is hammered within one window.
const CLICKS_PER_MESSAGE: usize = 64;

/// Remembers recent clicks per message (by its 8-byte tracking key) for a short window,
/// bounded in memory: over capacity, the message clicked longest ago is forgotten.
///
/// Memory only, per process: with several instances a burst split across them is not
/// seen, and a restart forgets; both only let a scan pass as clicks, never turn a
/// person into a machine.
#[derive(Debug)]
pub struct Bursts {
    window: Duration,
    capacity: usize,
    messages: HashMap<[u8; 8], Recent>,
    /// Messages by when they were last clicked (a counter, not the clock, so that
    /// out-of-order timestamps cannot confuse eviction): the first is the oldest.
    order: BTreeMap<u64, [u8; 8]>,
    next: u64,
}

#[derive(Debug)]
struct Recent {
    /// This message's key in `Bursts::order`.
    touched: u64,
    clicks: Vec<(DateTime<Utc>, u16)>,
}

impl Default for Bursts {
    fn default() -> Bursts {
        Bursts::new(BURST_WINDOW, BURST_CAPACITY)
    }
}

impl Bursts {
    /// A negative window is taken as zero (only simultaneous clicks), a zero capacity
    /// as one.
    pub fn new(window: Duration, capacity: usize) -> Bursts {
        Bursts {
            window: window.max(Duration::zero()),
            capacity: capacity.max(1),
            messages: HashMap::new(),
            order: BTreeMap::new(),
            next: 0,
        }
    }

    /// Records a click on `link` of message `key` at `at`; returns true when, counting
    /// this one, at least [`BURST_LINKS`] distinct links of that message (both, when it
    /// has exactly two) were clicked within the window. A message with one link (or
    /// none) never makes a burst: there is nothing to compare with.
    ///
    /// `links_in_message` is the number of tracked links, without the honeypot. The
    /// honeypot's clicks may be recorded too and count as one more link.
    ///
    /// Clicks may arrive out of order (several workers, clock steps); the answer then
    /// is whether some window containing this click holds enough links.
    pub fn click(
        &mut self,
        key: [u8; 8],
        link: u16,
        links_in_message: usize,
        at: DateTime<Utc>,
    ) -> bool {
        let needed = match links_in_message {
            0 | 1 => return false,
            2 => 2,
            _ => BURST_LINKS,
        };
        let seq = self.next;
        // 2^64 clicks will not happen; wrapping only keeps overflow checks quiet.
        self.next = self.next.wrapping_add(1);
        let recent = self.messages.entry(key).or_insert_with(|| Recent {
            touched: seq,
            clicks: Vec::new(),
        });
        self.order.remove(&recent.touched);
        recent.touched = seq;
        self.order.insert(seq, key);
        recent.clicks.push((at, link));
        let burst = recent.burst(at, self.window, needed);
        recent.prune(self.window);
        while self.messages.len() > self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.messages.remove(&oldest);
        }
        burst
    }

    /// How many messages are remembered (never more than the capacity).
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

impl Recent {
    /// Whether some window `[start, start + window]` that contains `at` holds `needed`
    /// distinct links. Such a window, if any, can start at one of the clicks.
    fn burst(&self, at: DateTime<Utc>, window: Duration, needed: usize) -> bool {
        let mut links = Vec::with_capacity(self.clicks.len());
        self.clicks.iter().any(|&(start, _)| {
            if !within(start, at, window) {
                return false;
            }
            links.clear();
            links.extend(
                self.clicks
                    .iter()
                    .filter(|&&(t, _)| within(start, t, window))
                    .map(|&(_, link)| link),
            );
            links.sort_unstable();
            links.dedup();
            links.len() >= needed
        })
    }

    /// Forgets clicks that no later click can share a window with, and the oldest
    /// beyond the per-message bound.
    fn prune(&mut self, window: Duration) {
        let Some(newest) = self.clicks.iter().map(|&(t, _)| t).max() else {
            return;
        };
        self.clicks
            .retain(|&(t, _)| newest.signed_duration_since(t) <= window);
        if self.clicks.len() > CLICKS_PER_MESSAGE {
            self.clicks.sort_unstable_by_key(|&(t, _)| t);
            let extra = self.clicks.len() - CLICKS_PER_MESSAGE;
            self.clicks.drain(..extra);
        }
    }
}

/// `t` lies in `[start, start + window]`. Written with a difference rather than
/// `start + window`, which would panic at the ends of chrono's range.
fn within(start: DateTime<Utc>, t: DateTime<Utc>, window: Duration) -> bool {
    let d = t.signed_duration_since(start);
    d >= Duration::zero() && d <= window
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const CHROME_WINDOWS: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
    const CHROME_ANDROID: &str = "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36";
    const CHROME_IOS: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/124.0.6367.88 Mobile/15E148 Safari/604.1";
    const FIREFOX_LINUX: &str =
        "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0";
    const FIREFOX_ANDROID: &str =
        "Mozilla/5.0 (Android 14; Mobile; rv:125.0) Gecko/125.0 Firefox/125.0";
    const SAFARI_MAC: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Safari/605.1.15";
    const SAFARI_IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4.1 Mobile/15E148 Safari/604.1";
    const EDGE: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.67";
    const SAMSUNG: &str = "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36";
    const CUBOT: &str = "Mozilla/5.0 (Linux; Android 10; CUBOT_X30) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.144 Mobile Safari/537.36";
    const CUBOT_SPACED: &str = "Mozilla/5.0 (Linux; Android 12; Cubot P60 Build/SP1A.210812.016) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.6045.163 Mobile Safari/537.36";
    const OUTLOOK_DESKTOP: &str =
        "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17328; Pro)";
    const OUTLOOK_WORD_ENGINE: &str = "Mozilla/4.0 (compatible; ms-office; MSOffice 16)";
    const THUNDERBIRD: &str =
        "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Thunderbird/115.10.1";
    // Apple Mail itself, Privacy Protection off: WebKit with no Safari or version.
    const APPLE_MAIL: &str =
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)";
    const APPLE_MPP: &str = "Mozilla/5.0";
    const GOOGLE_PROXY: &str =
        "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)";
    const YAHOO_PROXY: &str =
        "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html";
    const FROZEN_EDGE: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/42.0.2311.135 Safari/537.36 Edge/12.246 Mozilla/5.0";

    const PEOPLE: &[&str] = &[
        CHROME_WINDOWS,
        CHROME_ANDROID,
        CHROME_IOS,
        FIREFOX_LINUX,
        FIREFOX_ANDROID,
        SAFARI_MAC,
        SAFARI_IPHONE,
        EDGE,
        SAMSUNG,
        CUBOT,
        CUBOT_SPACED,
    ];

    fn sent() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2025-03-04T09:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    /// A hit an hour after sending, from an ordinary address.
    fn hit(kind: HitKind, ua: Option<&str>) -> Hit<'_> {
        Hit {
            kind,
            at: sent() + Duration::hours(1),
            head: false,
            user_agent: ua,
            ip: Some(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7))),
            sent_at: Some(sent()),
            honeypot: false,
        }
    }

    fn after(kind: HitKind, ua: &str, elapsed: Duration) -> Hit<'_> {
        Hit {
            at: sent() + elapsed,
            ..hit(kind, Some(ua))
        }
    }

    #[test]
    fn browsers_on_desktop_and_phone_are_people() {
        for ua in PEOPLE {
            for kind in [HitKind::Open, HitKind::Click] {
                assert_eq!(classify(&hit(kind, Some(ua))), None, "{kind:?} {ua}");
            }
        }
    }

    #[test]
    fn cubot_phones_are_people_though_their_name_ends_in_bot() {
        assert!(!is_program(&CUBOT.to_ascii_lowercase()));
        assert!(!is_program(&CUBOT_SPACED.to_ascii_lowercase()));
        // The same word ending elsewhere is a bot.
        assert!(is_program("mozilla/5.0 (compatible; examplebot/1.0)"));
    }

    #[test]
    fn mail_clients_opening_the_pixel_are_people() {
        for ua in [
            OUTLOOK_DESKTOP,
            OUTLOOK_WORD_ENGINE,
            THUNDERBIRD,
            APPLE_MAIL,
        ] {
            assert_eq!(classify(&hit(HitKind::Open, Some(ua))), None, "{ua}");
        }
    }

    #[test]
    fn office_checking_a_link_is_not_the_click() {
        for ua in [
            OUTLOOK_DESKTOP,
            OUTLOOK_WORD_ENGINE,
            "Microsoft Office Existence Discovery",
            "Microsoft Office Protocol Discovery",
        ] {
            assert_eq!(
                classify(&hit(HitKind::Click, Some(ua))),
                Some(Reason::OfficeLinkCheck),
                "{ua}"
            );
        }
    }

    #[test]
    fn apple_privacy_protection_is_told_by_its_bare_user_agent() {
        assert_eq!(
            classify(&hit(HitKind::Open, Some(APPLE_MPP))),
            Some(Reason::ApplePrivacyProxy)
        );
        assert_eq!(
            classify(&hit(HitKind::Open, Some(" mozilla/5.0 "))),
            Some(Reason::ApplePrivacyProxy)
        );
        // Anything after it is a real client's user agent.
        assert_eq!(classify(&hit(HitKind::Open, Some(APPLE_MAIL))), None);
        // Apple's proxy does not follow links; whatever sent this is a program.
        assert_eq!(
            classify(&hit(HitKind::Click, Some(APPLE_MPP))),
            Some(Reason::ScannerUserAgent)
        );
    }

    #[test]
    fn apple_privacy_protection_is_told_by_apples_network_on_opens_only() {
        let from = |ip: IpAddr, kind| Hit {
            ip: Some(ip),
            ..hit(kind, Some(APPLE_MAIL))
        };
        let apple = IpAddr::V4(Ipv4Addr::new(17, 58, 101, 4));
        let mapped = IpAddr::V6(Ipv4Addr::new(17, 253, 1, 2).to_ipv6_mapped());
        for ip in [apple, mapped] {
            assert_eq!(
                classify(&from(ip, HitKind::Open)),
                Some(Reason::ApplePrivacyProxy),
                "{ip}"
            );
            assert_eq!(classify(&from(ip, HitKind::Click)), None, "{ip}");
        }
        // Just outside 17.0.0.0/8, and an IPv6 address whose last bits look like 17.x.
        for ip in [
            IpAddr::V4(Ipv4Addr::new(16, 255, 255, 255)),
            IpAddr::V4(Ipv4Addr::new(18, 0, 0, 0)),
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0x1100, 0x0001)),
        ] {
            assert_eq!(classify(&from(ip, HitKind::Open)), None, "{ip}");
        }
        // The address alone is enough, even with no user agent.
        let bare = Hit {
            user_agent: None,
            ..from(apple, HitKind::Open)
        };
        assert_eq!(classify(&bare), Some(Reason::ApplePrivacyProxy));
    }

    #[test]
    fn webmail_image_proxies_are_labelled_but_said_to_act_for_a_person() {
        assert_eq!(
            classify(&hit(HitKind::Open, Some(GOOGLE_PROXY))),
            Some(Reason::GoogleImageProxy)
        );
        assert_eq!(
            classify(&hit(HitKind::Open, Some(YAHOO_PROXY))),
            Some(Reason::YahooProxy)
        );
        assert!(Reason::GoogleImageProxy.on_behalf_of_person());
        assert!(Reason::YahooProxy.on_behalf_of_person());
        for r in Reason::ALL {
            if !matches!(r, Reason::GoogleImageProxy | Reason::YahooProxy) {
                assert!(!r.on_behalf_of_person(), "{r}");
            }
        }
    }

    #[test]
    fn a_webmail_proxy_fetching_on_arrival_is_a_prefetch() {
        for ua in [GOOGLE_PROXY, YAHOO_PROXY] {
            assert_eq!(
                classify(&after(HitKind::Open, ua, Duration::milliseconds(500))),
                Some(Reason::TooSoonAfterDelivery),
                "{ua}"
            );
        }
    }

    #[test]
    fn programs_are_told_by_their_user_agent() {
        for ua in [
            "curl/8.5.0",
            "python-requests/2.31.0",
            "Python-urllib/3.11",
            "Wget/1.21.4",
            "Go-http-client/2.0",
            "Java/17.0.9",
            "okhttp/4.12.0",
            "libwww-perl/6.72",
            "Apache-HttpClient/4.5.14 (Java/17.0.2)",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.6099.71 Safari/537.36",
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
            "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
            "LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)",
            "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
            "Mozilla/5.0 (Windows NT 6.1; WOW64) SkypeUriPreview Preview/0.5",
            "Barracuda Sentinel (EE)",
            "Mozilla/5.0 (compatible; Mimecast URL Protect)",
            "Mozilla/5.0 (compatible; Baiduspider/2.0; +http://www.baidu.com/search/spider.html)",
            FROZEN_EDGE,
        ] {
            for kind in [HitKind::Open, HitKind::Click] {
                assert_eq!(
                    classify(&hit(kind, Some(ua))),
                    Some(Reason::ScannerUserAgent),
                    "{kind:?} {ua}"
                );
            }
        }
    }

    #[test]
    fn a_scanner_posing_as_a_browser_is_caught_by_timing() {
        // Safe Links-like: a current Chrome from a cloud address, seconds after sending.
        let scan = Hit {
            ip: Some(IpAddr::V4(Ipv4Addr::new(40, 94, 30, 5))),
            ..after(HitKind::Click, CHROME_WINDOWS, Duration::seconds(3))
        };
        assert_eq!(classify(&scan), Some(Reason::TooSoonAfterDelivery));
    }

    #[test]
    fn a_missing_empty_or_meaningless_user_agent_is_a_machine() {
        for ua in [None, Some(""), Some("   "), Some("-")] {
            assert_eq!(
                classify(&hit(HitKind::Open, ua)),
                Some(Reason::NoUserAgent),
                "{ua:?}"
            );
        }
    }

    #[test]
    fn opens_are_prefetches_until_two_seconds_after_sending() {
        let at = |ms| {
            classify(&after(
                HitKind::Open,
                FIREFOX_LINUX,
                Duration::milliseconds(ms),
            ))
        };
        assert_eq!(at(0), Some(Reason::TooSoonAfterDelivery));
        assert_eq!(at(1_999), Some(Reason::TooSoonAfterDelivery));
        assert_eq!(at(2_000), None);
        assert_eq!(at(2_001), None);
    }

    #[test]
    fn clicks_are_scans_until_ten_seconds_after_sending() {
        let at = |ms| {
            classify(&after(
                HitKind::Click,
                SAFARI_IPHONE,
                Duration::milliseconds(ms),
            ))
        };
        assert_eq!(at(2_500), Some(Reason::TooSoonAfterDelivery));
        assert_eq!(at(9_999), Some(Reason::TooSoonAfterDelivery));
        assert_eq!(at(10_000), None);
        assert_eq!(at(10_001), None);
    }

    #[test]
    fn hits_before_the_send_count_as_immediate_only_within_the_clock_skew() {
        let before = |d: Duration| after(HitKind::Click, CHROME_WINDOWS, -d);
        assert_eq!(
            classify(&before(Duration::seconds(3))),
            Some(Reason::TooSoonAfterDelivery)
        );
        assert_eq!(
            classify(&before(CLOCK_SKEW)),
            Some(Reason::TooSoonAfterDelivery)
        );
        assert_eq!(
            classify(&before(CLOCK_SKEW + Duration::milliseconds(1))),
            None
        );
        assert_eq!(classify(&before(Duration::days(2))), None);
    }

    #[test]
    fn without_a_send_time_timing_says_nothing() {
        let h = Hit {
            sent_at: None,
            ..after(HitKind::Click, CHROME_WINDOWS, Duration::zero())
        };
        assert_eq!(classify(&h), None);
    }

    #[test]
    fn head_requests_are_machines() {
        for kind in [HitKind::Open, HitKind::Click] {
            let h = Hit {
                head: true,
                ..hit(kind, Some(CHROME_WINDOWS))
            };
            assert_eq!(classify(&h), Some(Reason::HeadRequest), "{kind:?}");
        }
    }

    #[test]
    fn the_honeypot_link_is_a_machine_and_the_most_specific_reason() {
        let trap = Hit {
            honeypot: true,
            ..hit(HitKind::Click, Some(CHROME_WINDOWS))
        };
        assert_eq!(classify(&trap), Some(Reason::HoneypotLink));
        // It wins over everything else the same request shows.
        let all = Hit {
            head: true,
            user_agent: Some("curl/8.5.0"),
            at: sent(),
            ..trap
        };
        assert_eq!(classify(&all), Some(Reason::HoneypotLink));
    }

    #[test]
    fn more_specific_reasons_win() {
        let early = |ua| after(HitKind::Click, ua, Duration::seconds(1));
        let head = Hit {
            head: true,
            ..early(GOOGLE_PROXY)
        };
        assert_eq!(classify(&head), Some(Reason::HeadRequest));
        assert_eq!(
            classify(&early(OUTLOOK_DESKTOP)),
            Some(Reason::OfficeLinkCheck)
        );
        assert_eq!(
            classify(&early("curl/8.5.0")),
            Some(Reason::ScannerUserAgent)
        );
        let none = Hit {
            user_agent: None,
            ..early(CHROME_WINDOWS)
        };
        assert_eq!(classify(&none), Some(Reason::NoUserAgent));
    }

    #[test]
    fn labels_are_unique_snake_case_and_parse_back() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            let label = r.as_str();
            assert!(seen.insert(label), "duplicate {label}");
            assert!(
                !label.is_empty() && label.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{label}"
            );
            assert_eq!(label.parse::<Reason>(), Ok(r));
            assert_eq!(r.to_string(), label);
            let sentence = r.describe();
            assert!(
                sentence.ends_with('.') && sentence.len() < 100,
                "{sentence}"
            );
        }
        assert_eq!(Reason::ApplePrivacyProxy.as_str(), "apple_privacy_proxy");
        assert_eq!(Reason::AllLinksAtOnce.as_str(), "all_links_at_once");
        assert_eq!(
            "Head_Request".parse::<Reason>(),
            Err(UnknownReason("Head_Request".into()))
        );
    }

    const KEY: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

    fn ms(n: i64) -> DateTime<Utc> {
        sent() + Duration::milliseconds(n)
    }

    #[test]
    fn three_links_within_the_window_are_a_burst() {
        let mut b = Bursts::default();
        assert!(!b.click(KEY, 0, 4, ms(0)));
        assert!(!b.click(KEY, 1, 4, ms(400)));
        assert!(b.click(KEY, 2, 4, ms(900)));
        // Later clicks in the same window stay part of it.
        assert!(b.click(KEY, 3, 4, ms(1_200)));
    }

    #[test]
    fn the_window_is_inclusive_and_no_wider() {
        let mut b = Bursts::default();
        assert!(!b.click(KEY, 0, 3, ms(0)));
        assert!(!b.click(KEY, 1, 3, ms(2_000)));
        assert!(b.click(KEY, 2, 3, ms(5_000)));

        let mut b = Bursts::default();
        assert!(!b.click(KEY, 0, 3, ms(0)));
        assert!(!b.click(KEY, 1, 3, ms(2_000)));
        assert!(!b.click(KEY, 2, 3, ms(5_001)));
    }

    #[test]
    fn clicks_spread_out_are_no_burst() {
        let mut b = Bursts::default();
        for (i, t) in [0, 3_000, 6_000, 9_000, 12_000].into_iter().enumerate() {
            assert!(!b.click(KEY, i as u16, 5, ms(t)), "click {i}");
        }
    }

    #[test]
    fn the_same_link_again_is_not_another_link() {
        let mut b = Bursts::default();
        for t in 0..5 {
            assert!(!b.click(KEY, 0, 3, ms(t * 100)));
        }
        assert!(!b.click(KEY, 1, 3, ms(600)));
        assert!(b.click(KEY, 2, 3, ms(700)));
    }

    #[test]
    fn both_links_of_a_two_link_message_at_once_are_a_burst() {
        let mut b = Bursts::default();
        assert!(!b.click(KEY, 0, 2, ms(0)));
        assert!(b.click(KEY, 1, 2, ms(300)));
        // Spread out, they are not.
        let mut b = Bursts::default();
        assert!(!b.click(KEY, 0, 2, ms(0)));
        assert!(!b.click(KEY, 1, 2, ms(60_000)));
    }

    #[test]
    fn a_one_link_message_is_never_a_burst_by_itself() {
        let mut b = Bursts::default();
        for t in 0..10 {
            assert!(!b.click(KEY, 0, 1, ms(t)));
        }
        // Not even with the honeypot: the trap's own label covers that click.
        assert!(!b.click(KEY, crate::track::HONEYPOT, 1, ms(10)));
        assert!(!b.click(KEY, 0, 0, ms(11)));
        // Nothing is kept for such messages.
        assert!(b.is_empty());
    }

    #[test]
    fn messages_do_not_mix() {
        let mut b = Bursts::default();
        let other = [9; 8];
        assert!(!b.click(KEY, 0, 3, ms(0)));
        assert!(!b.click(other, 1, 3, ms(100)));
        assert!(!b.click(KEY, 1, 3, ms(200)));
        assert!(!b.click(other, 2, 3, ms(300)));
        assert!(b.click(KEY, 2, 3, ms(400)));
    }

    #[test]
    fn memory_stays_bounded_and_the_oldest_message_goes_first() {
        let capacity = 100;
        let mut b = Bursts::new(BURST_WINDOW, capacity);
        let key = |i: u64| i.to_be_bytes();
        // Two links of message 0, then a flood of other messages.
        assert!(!b.click(key(0), 0, 3, ms(0)));
        assert!(!b.click(key(0), 1, 3, ms(1)));
        for i in 1..=(capacity as u64 + 50) {
            b.click(key(i), 0, 3, ms(2));
            assert!(b.len() <= capacity);
        }
        assert_eq!(b.len(), capacity);
        assert_eq!(b.messages.len(), capacity);
        assert_eq!(b.order.len(), capacity);
        // Message 0 was forgotten: its third link starts afresh.
        assert!(!b.click(key(0), 2, 3, ms(3)));
        // The most recent messages are remembered.
        let last = capacity as u64 + 50;
        assert!(!b.click(key(last), 1, 3, ms(4)));
        assert!(b.click(key(last), 2, 3, ms(5)));
    }

    #[test]
    fn clicking_an_old_message_again_keeps_it() {
        let mut b = Bursts::new(BURST_WINDOW, 3);
        let key = |i: u64| i.to_be_bytes();
        assert!(!b.click(key(0), 0, 3, ms(0)));
        assert!(!b.click(key(1), 0, 3, ms(1)));
        assert!(!b.click(key(2), 0, 3, ms(2)));
        assert!(!b.click(key(0), 1, 3, ms(3)));
        // Message 1 is now the oldest and goes.
        assert!(!b.click(key(3), 0, 3, ms(4)));
        assert!(b.messages.contains_key(&key(0)));
        assert!(!b.messages.contains_key(&key(1)));
        assert!(b.click(key(0), 2, 3, ms(5)));
    }

    #[test]
    fn one_message_clicked_without_end_keeps_few_clicks() {
        let mut b = Bursts::default();
        for i in 0..2_000u32 {
            b.click(KEY, (i % 2) as u16, 3, ms(i64::from(i % 1_000)));
        }
        let kept = b.messages.get(&KEY).map(|r| r.clicks.len());
        assert!(kept.is_some_and(|n| n <= CLICKS_PER_MESSAGE), "{kept:?}");
        // Old clicks are dropped once a later one is a window away.
        b.click(KEY, 0, 3, ms(60_000));
        assert_eq!(b.messages.get(&KEY).map(|r| r.clicks.len()), Some(1));
    }

    #[test]
    fn out_of_order_timestamps_do_not_panic_and_still_count() {
        let mut b = Bursts::default();
        assert!(!b.click(KEY, 0, 3, ms(10_000)));
        assert!(!b.click(KEY, 1, 3, ms(8_000)));
        assert!(b.click(KEY, 2, 3, ms(9_000)));

        // A late click far behind the others counts on its own.
        let mut b = Bursts::default();
        assert!(!b.click(KEY, 0, 3, ms(60_000)));
        assert!(!b.click(KEY, 1, 3, ms(60_100)));
        assert!(!b.click(KEY, 2, 3, ms(0)));

        // The ends of chrono's range, in any order.
        let mut b = Bursts::new(Duration::MAX, 10);
        assert!(!b.click(KEY, 0, 3, DateTime::<Utc>::MAX_UTC));
        assert!(!b.click(KEY, 1, 3, DateTime::<Utc>::MIN_UTC));
        assert!(b.click(KEY, 2, 3, sent()));
    }

    #[test]
    fn odd_construction_arguments_are_made_sane() {
        let mut b = Bursts::new(Duration::seconds(-5), 0);
        // A zero window: only simultaneous clicks make a burst.
        assert!(!b.click(KEY, 0, 2, ms(0)));
        assert!(b.click(KEY, 1, 2, ms(0)));
        assert!(!b.click([7; 8], 0, 2, ms(1)));
        assert_eq!(b.len(), 1);
    }
}
