//! Requests and errors per minute over the last quarter hour, kept by the proxy so that a page
//! opened now shows the whole quarter hour.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// The minutes shown.
pub const MINUTES: usize = 15;

/// One minute's counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Minute {
    /// The minute's start, in seconds since the Unix epoch.
    pub start: u64,
    pub requests: u32,
    pub errors: u32,
}

/// A slot per minute, reused when its minute comes round again.
#[derive(Default)]
pub struct Minutes {
    slots: [Minute; MINUTES],
}

fn minute_of(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() / 60)
}

impl Minutes {
    pub fn count(&mut self, at: SystemTime, error: bool) {
        let minute = minute_of(at);
        let slot = &mut self.slots[(minute % MINUTES as u64) as usize];
        if slot.start != minute * 60 {
            *slot = Minute { start: minute * 60, requests: 0, errors: 0 };
        }
        slot.requests += 1;
        slot.errors += u32::from(error);
    }

    /// The last [`MINUTES`] minutes up to `now`'s, oldest first; a minute without requests is zero.
    pub fn last(&self, now: SystemTime) -> Vec<Minute> {
        let now = minute_of(now);
        (now.saturating_sub(MINUTES as u64 - 1)..=now)
            .map(|minute| {
                let slot = self.slots[(minute % MINUTES as u64) as usize];
                if slot.start == minute * 60 { slot } else { Minute { start: minute * 60, requests: 0, errors: 0 } }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn counts_land_in_their_minute_and_old_minutes_fall_away() {
        let mut minutes = Minutes::default();
        let base = 1_000_000 * 60;
        minutes.count(at(base), false);
        minutes.count(at(base + 59), true);
        minutes.count(at(base + 60), false);
        let last = minutes.last(at(base + 60));
        assert_eq!(last.len(), MINUTES);
        assert_eq!(last[MINUTES - 2], Minute { start: base, requests: 2, errors: 1 });
        assert_eq!(last[MINUTES - 1], Minute { start: base + 60, requests: 1, errors: 0 });
        assert!(last[..MINUTES - 2].iter().all(|m| m.requests == 0));
        // Fifteen minutes later the first minute is out of the window, and its slot is reused.
        let later = base + 15 * 60;
        assert!(minutes.last(at(later)).iter().all(|m| m.start != base));
        assert_eq!(minutes.last(at(later))[MINUTES - 2].requests, 0, "the minute before is not counted twice");
        minutes.count(at(later), false);
        assert_eq!(minutes.last(at(later))[MINUTES - 1], Minute { start: later, requests: 1, errors: 0 });
    }
}
