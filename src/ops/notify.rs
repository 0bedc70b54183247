//! The systemd notify protocol (sd_notify(3)): READY=1 once the daemon serves,
//! RELOADING=1/READY=1 around a reload, STOPPING=1 on shutdown, and WATCHDOG=1 while
//! every loop that registered a [`Beat`] is alive.
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every call is a no-op.
//!
//! The watchdog is not pinged from a timer alone: a timer keeps ticking while the send
//! loop is stuck on a database call that never returns, and systemd would never learn.
//! Each loop holds a [`Beat`] and says when it starts work ([`Beat::busy`]) and when it
//! waits on purpose ([`Beat::waiting`]: sleeping until the next due step, in IMAP IDLE,
//! in a reconnect backoff). The pinger sends WATCHDOG=1 only while no loop has been
//! busy for longer than the watchdog interval, so one hung loop stops the pings and
//! systemd restarts the daemon.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

/// Sends one state to the service manager, if there is one; failures are logged
/// (the daemon runs on without systemd knowing, which is no reason to stop it).
fn send(states: &[State<'_>]) {
    #[cfg(unix)]
    {
        let s: Vec<sd_notify::NotifyState<'_>> = states
            .iter()
            .map(|s| match s {
                State::Ready => sd_notify::NotifyState::Ready,
                State::Reloading => sd_notify::NotifyState::Reloading,
                State::Stopping => sd_notify::NotifyState::Stopping,
                State::Watchdog => sd_notify::NotifyState::Watchdog,
                State::Status(t) => sd_notify::NotifyState::Status(t),
            })
            .collect();
        if let Err(e) = sd_notify::notify(&s) {
            warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
        }
    }
    #[cfg(not(unix))]
    let _ = states;
}

enum State<'a> {
    Ready,
    Reloading,
    Stopping,
    Watchdog,
    Status(&'a str),
}

/// The daemon serves: migrations ran, the configuration is loaded, listeners are bound.
pub fn ready(status: &str) {
    send(&[State::Ready, State::Status(status)]);
}

/// A reload starts; [`ready`] ends it.
pub fn reloading() {
    send(&[State::Reloading]);
}

/// Shutdown has begun.
pub fn stopping() {
    send(&[State::Stopping, State::Status("stopping")]);
}

/// A loop's liveness, as the watchdog sees it. Dropping it unregisters the loop.
#[derive(Debug)]
pub struct Beat {
    /// Milliseconds since [`epoch`] at which the current work began, plus one; 0 while
    /// the loop waits on purpose.
    busy_since: Arc<AtomicU64>,
}

/// A registered loop: its name (for the log line that says which one hung), how long
/// one piece of its work may take at most, and its clock.
struct Entry {
    name: String,
    grace: Duration,
    busy_since: Weak<AtomicU64>,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

/// Every registered loop.
type Registry = Mutex<Vec<Entry>>;

fn registry() -> &'static Registry {
    static LOOPS: OnceLock<Registry> = OnceLock::new();
    LOOPS.get_or_init(Mutex::default)
}

impl Beat {
    /// Registers a loop; it starts busy (it is about to do its first work). `grace`:
    /// the longest one piece of its work may rightly take (an SMTP end of data may wait
    /// ten minutes for its answer); it counts as hung only past that and past the
    /// watchdog interval.
    pub fn register(name: impl Into<String>, grace: Duration) -> Beat {
        let busy_since = Arc::new(AtomicU64::new(now_ms()));
        if let Ok(mut loops) = registry().lock() {
            loops.retain(|e| e.busy_since.strong_count() > 0);
            loops.push(Entry {
                name: name.into(),
                grace,
                busy_since: Arc::downgrade(&busy_since),
            });
        }
        Beat { busy_since }
    }

    /// Work starts (or goes on: each call restarts the clock).
    pub fn busy(&self) {
        self.busy_since.store(now_ms(), Ordering::Relaxed);
    }

    /// The loop waits on purpose: however long that takes, it is not hung.
    pub fn waiting(&self) {
        self.busy_since.store(0, Ordering::Relaxed);
    }
}

/// The loops busy for longer than `limit` and their own grace, by name.
fn hung(limit: Duration) -> Vec<String> {
    let now = now_ms();
    let Ok(loops) = registry().lock() else {
        return vec!["(watchdog registry poisoned)".into()];
    };
    loops
        .iter()
        .filter_map(|e| {
            let since = e.busy_since.upgrade()?.load(Ordering::Relaxed);
            let limit = limit.max(e.grace).as_millis() as u64;
            (since != 0 && now.saturating_sub(since) > limit).then(|| e.name.clone())
        })
        .collect()
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`, for this process).
pub fn watchdog_interval() -> Option<Duration> {
    #[cfg(unix)]
    {
        sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
    }
    #[cfg(not(unix))]
    None
}

/// Pings the watchdog at half its interval while no loop is hung, until `stop`.
/// Returns at once when systemd asked for no watchdog.
pub async fn watchdog(stop: CancellationToken) {
    let Some(interval) = watchdog_interval() else {
        return;
    };
    debug!(?interval, "systemd watchdog enabled");
    let mut reported = false;
    loop {
        let stuck = hung(interval);
        if stuck.is_empty() {
            send(&[State::Watchdog]);
            reported = false;
        } else if !reported {
            // Said once: systemd will restart the daemon when the interval runs out.
            error!(loops = %stuck.join(", "), "a loop has been busy for longer than the watchdog interval; no longer pinging the watchdog");
            reported = true;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval / 2) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_loop_past_the_limit_is_hung_and_a_waiting_one_never() {
        let a = Beat::register("test-a", Duration::ZERO);
        let b = Beat::register("test-b", Duration::ZERO);
        let c = Beat::register("test-c", Duration::from_secs(3600));
        c.busy_since.store(1, Ordering::Relaxed);
        b.waiting();
        // Pretend `a` started its work long ago.
        a.busy_since.store(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(5));
        let stuck = hung(Duration::from_millis(1));
        assert!(stuck.contains(&"test-a".to_string()), "{stuck:?}");
        assert!(!stuck.contains(&"test-b".to_string()), "{stuck:?}");
        // Within its own grace: busy, not hung.
        assert!(!stuck.contains(&"test-c".to_string()), "{stuck:?}");
        a.busy();
        assert!(!hung(Duration::from_secs(3600)).contains(&"test-a".to_string()));
        drop(a);
        a_gone();
    }

    fn a_gone() {
        assert!(!hung(Duration::ZERO).contains(&"test-a".to_string()));
    }
}
