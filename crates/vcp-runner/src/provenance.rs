//! Where a record comes from: the code (commit, clean or not) and the time. Its own file so that
//! the lock, the runner and the records can all use it without depending on each other.

/// Commit and dirty flag of the code this binary was built from (embedded by `build.rs`;
/// `None` when it was not built from a git checkout).
pub fn git_state() -> (Option<String>, Option<bool>) {
    let commit = env!("VCP_BUILD_COMMIT");
    let dirty = env!("VCP_BUILD_DIRTY");
    (
        (commit != "unknown").then(|| commit.to_string()),
        dirty.parse().ok(),
    )
}

/// UTC time as (Unix seconds, RFC 3339), e.g. `2026-11-30T15:04:05Z`.
pub fn utc_now() -> (f64, String) {
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let t = chrono::DateTime::<chrono::Utc>::from(now);
    (secs, t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}
