//! When to try a webhook again (RELIABILITY.md §1–2): attempts at 0, 5 s, 5 min, 30 min, 2 h,
//! 5 h, 10 h, 14 h, 20 h and 24 h after the previous one, each ±10 % jitter; after the tenth,
//! the event is dead-lettered. `Retry-After` (429, 502, 503, 504) is honoured, capped at 1 h.

/// Delays after each failed attempt (index = attempts made - 1), in seconds.
pub const DELAYS: [i64; 9] = [5, 300, 1_800, 7_200, 18_000, 36_000, 50_400, 72_000, 86_400];

/// Attempts before an event is dead-lettered.
pub const MAX_ATTEMPTS: i32 = 10;

/// The longest `Retry-After` honoured.
pub const MAX_RETRY_AFTER_MS: i64 = 3_600_000;

/// When to try again after the `attempts`-th attempt failed at `now` (ms), or `None` to
/// dead-letter. `jitter` in [-1, 1] scales the ±10 %; `retry_after_ms` comes from the receiver.
pub fn next_attempt(attempts: i32, now: i64, jitter: f64, retry_after_ms: Option<i64>) -> Option<i64> {
    if attempts >= MAX_ATTEMPTS {
        return None;
    }
    let index = usize::try_from(attempts.max(1) - 1).ok()?;
    let base = DELAYS.get(index).copied()? * 1000;
    let jittered = base + (base as f64 * 0.1 * jitter.clamp(-1.0, 1.0)) as i64;
    let wait = match retry_after_ms {
        Some(ra) => jittered.max(ra.min(MAX_RETRY_AFTER_MS)),
        None => jittered,
    };
    Some(now + wait)
}

/// A `Retry-After` header (seconds, or an HTTP date) in milliseconds from `now_ms`.
pub fn retry_after_ms(value: &str, now_ms: i64) -> Option<i64> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<i64>() {
        return Some(secs.max(0) * 1000);
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?.timestamp_millis();
    Some((at - now_ms).max(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_ten_attempts_over_about_three_days() {
        let mut t = 0;
        let mut times = vec![0];
        for attempt in 1..MAX_ATTEMPTS {
            t = next_attempt(attempt, t, 0.0, None).unwrap();
            times.push(t / 1000);
        }
        assert_eq!(times, vec![0, 5, 305, 2_105, 9_305, 27_305, 63_305, 113_705, 185_705, 272_105]);
        assert_eq!(next_attempt(MAX_ATTEMPTS, t, 0.0, None), None, "then dead-lettered");
        // 75 h 35 min in all.
        assert_eq!(times[9], 75 * 3600 + 35 * 60 + 5);
    }

    #[test]
    fn jitter_stays_within_ten_percent_and_retry_after_is_honoured_with_a_cap() {
        for j in [-1.0, -0.3, 0.0, 0.7, 1.0] {
            let next = next_attempt(2, 0, j, None).unwrap();
            assert!((270_000..=330_000).contains(&next), "{next}");
        }
        assert_eq!(next_attempt(1, 0, 0.0, Some(120_000)), Some(120_000));
        assert_eq!(next_attempt(1, 0, 0.0, Some(10 * 3_600_000)), Some(3_600_000));
        assert_eq!(retry_after_ms("120", 0), Some(120_000));
        assert_eq!(retry_after_ms("Thu, 01 Jan 1970 00:02:00 GMT", 0), Some(120_000));
        assert_eq!(retry_after_ms("soon", 0), None);
    }
}
