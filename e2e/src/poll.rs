//! The suite's one bounded polling helper: [`Poll`].
//!
//! Every wait of the e2e suite (an object reaching a state, a process answering, a count
//! settling) looks at the world every `interval` until a condition holds, and panics once
//! `timeout` has passed, naming what it waited for and what it saw last. Nothing here measures:
//! the elapsed time [`Poll::elapsed`] reports is for `docs/benchmarks.md`, not for assertions.

use std::fmt::Display;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The default time between two looks: 250 ms.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(250);

/// A bounded wait: looks every `interval` (default [`DEFAULT_INTERVAL`]) and panics once
/// `timeout` has passed since [`Poll::new`].
///
/// Two ways to use it:
/// - [`Poll::until`] with a closure that looks once; it returns the value of the first look that
///   is done (see [`Look`] for what counts as done).
/// - [`Poll::tick`] at the end of a hand-written loop whose looks keep state between iterations
///   (timestamps of what was first seen when): it panics when the time is up, else sleeps.
///
/// The panic message reads `timed out after <timeout> waiting for <what>: <last look>`, followed
/// by the tail of a log file when [`Poll::log_tail`] named one. [`Poll::try_until`] and
/// [`Poll::try_tick`] return that message as an error instead (for the benchmarks, which record
/// a failed run and go on).
#[derive(Debug)]
pub struct Poll {
    what: String,
    timeout: Duration,
    interval: Duration,
    started: Instant,
    log: Option<(PathBuf, usize)>,
}

impl Poll {
    /// A wait for `what` (a phrase such as `"Cluster c1 provisioned"`) that gives up after
    /// `timeout`, counted from now.
    pub fn new(what: impl Into<String>, timeout: Duration) -> Self {
        Poll {
            what: what.into(),
            timeout,
            interval: DEFAULT_INTERVAL,
            started: Instant::now(),
            log: None,
        }
    }

    /// Looks every `interval` instead of every [`DEFAULT_INTERVAL`].
    pub fn every(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Appends the last `lines` lines of the log file at `path` (the manager's, cluster-autoscaler's)
    /// to the timeout panic, read when it happens.
    pub fn log_tail(mut self, path: &Path, lines: usize) -> Self {
        self.log = Some((path.to_path_buf(), lines));
        self
    }

    /// Time since [`Poll::new`].
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Ends one iteration of a hand-written loop that was not done: panics when `timeout` has
    /// passed (the message shows `seen`, what the last look saw), else sleeps `interval`.
    pub async fn tick(&self, seen: impl Display) {
        if let Err(e) = self.try_tick(seen).await {
            panic!("{e}");
        }
    }

    /// [`Poll::tick`] for a caller that reports rather than panics (the benchmarks): the timeout
    /// is an error with the same message.
    ///
    /// # Errors
    /// When `timeout` has passed.
    pub async fn try_tick(&self, seen: impl Display) -> anyhow::Result<()> {
        if self.started.elapsed() >= self.timeout {
            let seen = seen.to_string();
            let seen = if seen.is_empty() {
                "not yet".to_owned()
            } else {
                seen
            };
            let log = match &self.log {
                Some((path, lines)) => format!(
                    "\nlog {}:\n{}",
                    path.display(),
                    crate::log_tail(path, *lines)
                ),
                None => String::new(),
            };
            anyhow::bail!(
                "timed out after {:?} waiting for {}: {seen}{log}",
                self.timeout,
                self.what
            );
        }
        tokio::time::sleep(self.interval).await;
        Ok(())
    }

    /// Calls `look` until it is done and returns its value (see [`Look`]); panics once `timeout`
    /// has passed, showing what the last look saw. Looks at once, then every `interval`.
    pub async fn until<F, Fut, L>(self, look: F) -> L::Value
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = L>,
        L: Look,
    {
        match self.try_until(look).await {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`Poll::until`] for a caller that reports rather than panics (the benchmarks).
    ///
    /// # Errors
    /// When `timeout` has passed before a look was done; the message is the one
    /// [`Poll::until`] panics with.
    pub async fn try_until<F, Fut, L>(self, mut look: F) -> anyhow::Result<L::Value>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = L>,
        L: Look,
    {
        loop {
            match look().await.into_look() {
                Ok(v) => return Ok(v),
                Err(seen) => self.try_tick(seen).await?,
            }
        }
    }
}

/// What one look of [`Poll::until`] returns: done (with a value), or not yet (with what it saw,
/// for the timeout message).
pub trait Look {
    /// The value [`Poll::until`] returns once the look is done.
    type Value;
    /// `Ok(value)` when done, `Err(what was seen)` when not yet.
    fn into_look(self) -> Result<Self::Value, String>;
}

/// `true` is done.
impl Look for bool {
    type Value = ();
    fn into_look(self) -> Result<(), String> {
        if self { Ok(()) } else { Err(String::new()) }
    }
}

/// `Some(v)` is done with `v`.
impl<T> Look for Option<T> {
    type Value = T;
    fn into_look(self) -> Result<T, String> {
        self.ok_or_else(String::new)
    }
}

/// `Ok(v)` is done with `v`; `Err(seen)` is not yet, and `seen` says what the look saw.
impl<T> Look for Result<T, String> {
    type Value = T;
    fn into_look(self) -> Result<T, String> {
        self
    }
}

/// `Ok(true)` is done; `Ok(false)` and errors (a failed API call) are not yet: the last error
/// shows in the timeout message.
impl Look for anyhow::Result<bool> {
    type Value = ();
    fn into_look(self) -> Result<(), String> {
        match self {
            Ok(b) => b.into_look(),
            Err(e) => Err(format!("error {e:#}")),
        }
    }
}

/// `Ok(Some(v))` is done with `v`; `Ok(None)` and errors are not yet.
impl<T> Look for anyhow::Result<Option<T>> {
    type Value = T;
    fn into_look(self) -> Result<T, String> {
        match self {
            Ok(o) => o.into_look(),
            Err(e) => Err(format!("error {e:#}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn until_returns_the_first_done_look() {
        let mut n = 0;
        let v = Poll::new("n to reach 3", Duration::from_secs(5))
            .every(Duration::from_millis(1))
            .until(|| {
                n += 1;
                let n = n;
                async move { if n >= 3 { Ok(n) } else { Err(format!("n={n}")) } }
            })
            .await;
        assert_eq!(v, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 0ns waiting for never: n=1")]
    async fn until_panics_naming_what_and_the_last_look() {
        Poll::new("never", Duration::ZERO)
            .until(|| async { Err::<(), _>("n=1".to_owned()) })
            .await;
    }

    #[tokio::test]
    async fn try_until_reports_the_timeout_as_an_error() {
        let e = Poll::new("never", Duration::ZERO)
            .try_until(|| async { false })
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "timed out after 0ns waiting for never: not yet"
        );
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for ok: error boom")]
    async fn errors_are_not_yet() {
        Poll::new("ok", Duration::ZERO)
            .until(|| async { anyhow::Result::<bool>::Err(anyhow::anyhow!("boom")) })
            .await;
    }
}
