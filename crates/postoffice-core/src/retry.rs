//! Exponential backoff with jitter, for the [`Producer`](crate::Producer) and
//! for tower's `RetryLayer`.
//!
//! The same [`Backoff`] decides how long a failed partition waits before the
//! producer tries again (the time is kept in the store, so a restart keeps
//! it) and, through [`RetryPolicy`], how long tower's retry middleware waits
//! between quick in-place retries.
//!
//! ```
//! use std::time::Duration;
//! use postoffice_core::{EncodedMessage, JsonLayer, Transport, retry::{Backoff, RetryPolicy}, transport::InMemory};
//! use tower::ServiceBuilder;
//! use tower::retry::RetryLayer;
//!
//! let policy = RetryPolicy::new(Backoff::new(Duration::from_millis(50), Duration::from_secs(2)), 3);
//! let transport = Transport::new(
//!     ServiceBuilder::new()
//!         .layer(JsonLayer::new())
//!         .layer(RetryLayer::new(policy))
//!         .service(InMemory::<EncodedMessage>::default()),
//! );
//! # let _ = transport;
//! ```

use std::convert::Infallible;
use std::time::Duration;

use backon::BackoffBuilder;

use crate::{BoxError, SendError, is_permanent};

/// Exponential backoff: `min * factor^attempt`, capped at `max`, with random
/// jitter of up to one more delay when enabled.
///
/// Defaults: 100 ms, doubling, capped at 60 s, jitter on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    factor: f32,
    jitter: bool,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(60))
    }
}

impl Backoff {
    /// A doubling backoff from `min` to `max`, with jitter.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            factor: 2.0,
            jitter: true,
        }
    }

    /// Sets the growth factor (at least 1).
    pub fn factor(mut self, factor: f32) -> Self {
        self.factor = factor.max(1.0);
        self
    }

    /// Turns jitter on or off.
    pub fn jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// The delay before try number `attempt + 1`, after `attempt` failures
    /// (counting from 0 for the first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let mut builder = backon::ExponentialBuilder::default()
            .with_min_delay(self.min)
            .with_max_delay(self.max)
            .with_factor(self.factor)
            .without_max_times();
        if self.jitter {
            builder = builder.with_jitter();
        }
        let steps = usize::try_from(attempt.min(64)).unwrap_or(64);
        builder.build().nth(steps).unwrap_or(self.max)
    }
}

/// Says whether an error is worth retrying.
pub trait Classify {
    /// Whether trying again cannot help.
    fn is_permanent(&self) -> bool;
}

impl Classify for BoxError {
    fn is_permanent(&self) -> bool {
        is_permanent(self.as_ref())
    }
}

impl Classify for SendError {
    fn is_permanent(&self) -> bool {
        SendError::is_permanent(self)
    }
}

impl Classify for Infallible {
    fn is_permanent(&self) -> bool {
        match *self {}
    }
}

/// A `tower::retry::Policy` that retries failed sends up to a number of times
/// with [`Backoff`] between tries, and never retries a permanent error.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    backoff: Backoff,
    max_retries: u32,
    attempt: u32,
}

impl RetryPolicy {
    /// Retries up to `max_retries` times per request.
    pub fn new(backoff: Backoff, max_retries: u32) -> Self {
        Self {
            backoff,
            max_retries,
            attempt: 0,
        }
    }
}

impl<Req, Res, E> tower::retry::Policy<Req, Res, E> for RetryPolicy
where
    Req: Clone,
    E: Classify,
{
    type Future = tokio::time::Sleep;

    fn retry(&mut self, _req: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        let error = result.as_ref().err()?;
        if error.is_permanent() || self.attempt >= self.max_retries {
            return None;
        }
        let delay = self.backoff.delay(self.attempt);
        self.attempt += 1;
        Some(tokio::time::sleep(delay))
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_capped() {
        let backoff =
            Backoff::new(Duration::from_millis(10), Duration::from_millis(80)).jitter(false);
        let expected = [10, 20, 40, 80, 80, 80];
        for (attempt, want) in (0..6).zip(expected) {
            // backon computes in f32, so allow a millisecond of rounding.
            let got = backoff.delay(attempt).as_millis();
            assert!(
                got.abs_diff(want) <= 1,
                "attempt {attempt}: {got} ms, want {want} ms"
            );
        }
        let jittered = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
        for attempt in 0..10 {
            assert!(jittered.delay(attempt) <= Duration::from_secs(2));
        }
    }
}
