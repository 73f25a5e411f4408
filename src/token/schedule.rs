//! Pure timing rules of the token lifecycle: how long a token is trusted, when to refresh it, and
//! how long to wait after a failure. No clock is read here, so every rule is unit-tested directly.

use std::time::Duration;

/// Used when the token service sends no usable `expires_in` (missing, zero, negative, garbage).
/// Short, so a token of unknown lifetime is replaced long before a typical one-hour expiry.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// An `expires_in` beyond this is taken as this: no token is trusted for more than a day, and
/// adding an absurd value to an `Instant` cannot overflow.
pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Never refresh more often than this, whatever lifetime the service claims.
pub const MIN_REFRESH: Duration = Duration::from_secs(1);
/// First retry delay after a failed refresh; doubles per consecutive failure up to [`MAX_BACKOFF`].
pub const BASE_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A token stops being injected this long before its real expiry (or a tenth of its lifetime,
/// whichever is less), so it does not expire while a request is on its way.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(30);

/// The lifetime to trust for a token, from the service's `expires_in` in seconds.
pub fn lifetime(expires_in: Option<u64>) -> Duration {
    match expires_in {
        None | Some(0) => DEFAULT_LIFETIME,
        Some(secs) => Duration::from_secs(secs).min(MAX_LIFETIME),
    }
}

/// How long after issue a token may still be injected.
pub fn usable_for(lifetime: Duration) -> Duration {
    lifetime.saturating_sub(EXPIRY_MARGIN.min(lifetime / 10))
}

/// How long after issue to fetch the next token: three quarters of the lifetime, so an hourly
/// token is replaced with fifteen minutes to spare and a failing service has that long to recover
/// before callers notice.
pub fn refresh_in(lifetime: Duration) -> Duration {
    (lifetime * 3 / 4).max(MIN_REFRESH)
}

/// [`refresh_in`], brought forward by `spread` (clamped to `[0, 1]`) of a fifth of the lifetime:
/// an hourly token is replaced between 33 and 45 minutes after issue. Tenants of one process get
/// evenly spaced spreads, so their refreshes are spread over twelve minutes of every hour instead
/// of falling in the same one.
pub fn refresh_in_spread(lifetime: Duration, spread: f64) -> Duration {
    let earlier = (lifetime / 5).mul_f64(spread.clamp(0.0, 1.0));
    refresh_in(lifetime).saturating_sub(earlier).max(MIN_REFRESH)
}

/// The wait before retry number `failures` (1 for the first failure), with jitter so a fleet of
/// proxies does not retry in step. `unit` is a random number in `[0, 1)`; the result lies in
/// `[d/2, d)` where `d` is the capped exponential delay.
pub fn backoff(failures: u32, unit: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let capped = BASE_BACKOFF.saturating_mul(1 << exp).min(MAX_BACKOFF);
    let half = capped / 2;
    half + half.mul_f64(unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_expires_in_values_get_safe_lifetimes() {
        assert_eq!(lifetime(None), DEFAULT_LIFETIME);
        assert_eq!(lifetime(Some(0)), DEFAULT_LIFETIME);
        assert_eq!(lifetime(Some(3600)), Duration::from_secs(3600));
        assert_eq!(lifetime(Some(u64::MAX)), MAX_LIFETIME);
    }

    #[test]
    fn an_hourly_token_is_refreshed_at_45_minutes_and_used_until_59_30() {
        let hour = Duration::from_secs(3600);
        assert_eq!(refresh_in(hour), Duration::from_secs(2700));
        assert_eq!(usable_for(hour), Duration::from_secs(3570));
        assert!(refresh_in(hour) < usable_for(hour));
    }

    #[test]
    fn spread_refreshes_stay_inside_the_window_and_before_expiry() {
        let hour = Duration::from_secs(3600);
        assert_eq!(refresh_in_spread(hour, 0.0), refresh_in(hour));
        assert_eq!(refresh_in_spread(hour, 1.0), Duration::from_secs(1980));
        let times: Vec<_> = (0..100).map(|i| refresh_in_spread(hour, i as f64 / 100.0)).collect();
        assert!(times.windows(2).all(|w| w[1] < w[0]), "evenly spaced, all different");
        for secs in [1, 2, 5, 60, 3600, 86_400] {
            let l = Duration::from_secs(secs);
            for spread in [-1.0, 0.0, 0.5, 0.99, 7.0] {
                let at = refresh_in_spread(l, spread);
                assert!(at >= MIN_REFRESH && at <= refresh_in(l), "{secs} {spread}");
            }
        }
    }

    #[test]
    fn short_lifetimes_refresh_before_they_stop_being_usable() {
        for secs in [1, 2, 5, 10, 60, 299] {
            let l = Duration::from_secs(secs);
            assert!(refresh_in(l) >= MIN_REFRESH);
            assert!(usable_for(l) > Duration::ZERO, "{secs}");
            if secs >= 4 {
                assert!(refresh_in(l) < usable_for(l), "{secs}");
            }
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        assert_eq!(backoff(1, 0.0), Duration::from_millis(500));
        assert!(backoff(1, 0.999) < Duration::from_secs(1));
        assert_eq!(backoff(3, 0.0), Duration::from_secs(2));
        assert_eq!(backoff(30, 0.0), MAX_BACKOFF / 2);
        assert!(backoff(u32::MAX, 0.999) < MAX_BACKOFF);
    }
}
