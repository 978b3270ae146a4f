//! The wall clock as both daemons read it: whole Unix seconds, the unit of every expiry
//! (temp URLs, signatures) and timestamp that crosses the API. One home, so every expiry
//! is computed and checked the same way.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in Unix seconds (0 if the clock is set before 1970).
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
