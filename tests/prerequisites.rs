//! Runs after the `it` binary in a `cargo test` and sums up the tests it skipped because a
//! program from outside Cargo was missing (`tests/it/prerequisites.rs` logs each skip).
//! Not a test of its own, so it takes no harness; asked to list tests (as cargo-nextest does),
//! it lists none.

use std::collections::BTreeMap;
use std::path::Path;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // The `it` binary logs under the cargo process that runs both (its parent, and ours).
    let run = std::os::unix::process::parent_id();
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("prerequisite-skips-{run}.log"));
    let Ok(text) = std::fs::read_to_string(&log) else {
        println!("prerequisites: every test that needs a program from outside Cargo ran");
        return;
    };
    let _ = std::fs::remove_file(&log);
    let mut by_reason: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for line in text.lines() {
        if let Some((test, reason)) = line.split_once('\t') {
            by_reason.entry(reason).or_default().push(test);
        }
    }
    let total: usize = by_reason.values().map(Vec::len).sum();
    println!("prerequisites: {total} tests skipped (set TIDINGS_TEST_REQUIRE_ALL=1 to make a skip fail)");
    for (reason, tests) in by_reason {
        println!("  {} skipped: {reason}", tests.len());
        for test in tests {
            println!("    {test}");
        }
    }
}
