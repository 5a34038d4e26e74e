//! Programs some tests need from outside Cargo (`redis-server`, later a CQL node, a browser).
//!
//! A test that needs one starts with `require!(Prerequisite::X)`. When the program is missing the
//! test returns at once and says so in one line, written past the test harness's output capture so
//! that it shows in a plain `cargo test`; the line is also appended to a log that the
//! `prerequisites` test binary, run after this one, sums up. With `TIDINGS_TEST_REQUIRE_ALL=1` (as
//! `.ci/run` sets) a missing program fails the test instead, so CI can never pass by skipping.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub const REQUIRE_ALL: &str = "TIDINGS_TEST_REQUIRE_ALL";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prerequisite {
    /// `redis-server` and `redis-cli`: the cluster tests start private Redis servers and clusters.
    Redis,
}

impl Prerequisite {
    fn programs(self) -> &'static [&'static str] {
        match self {
            Prerequisite::Redis => &["redis-server", "redis-cli"],
        }
    }

    fn how_to_get(self) -> &'static str {
        match self {
            Prerequisite::Redis => "apt install redis-server",
        }
    }

    /// `None` when everything is there, or the line that says what is missing and how to get it.
    fn missing(self) -> Option<&'static str> {
        static REDIS: OnceLock<Option<String>> = OnceLock::new();
        let cell = match self {
            Prerequisite::Redis => &REDIS,
        };
        cell.get_or_init(|| {
            let missing: Vec<&str> = self.programs().iter().copied().filter(|p| find_on_path(p).is_none()).collect();
            (!missing.is_empty()).then(|| format!("{} not on PATH ({})", missing.join(", "), self.how_to_get()))
        })
        .as_deref()
    }
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Where skips of this `cargo test` run are logged: one file per run, named after the cargo
/// process that runs every test binary of it.
pub fn skip_log(run: u32) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("prerequisite-skips-{run}.log"))
}

/// True when the test may go on; false when it must return (it has been reported as skipped).
/// Panics instead under `TIDINGS_TEST_REQUIRE_ALL=1`.
pub fn check(prerequisite: Prerequisite) -> bool {
    let Some(missing) = prerequisite.missing() else { return true };
    let test = std::thread::current().name().unwrap_or("?").to_owned();
    if std::env::var(REQUIRE_ALL).is_ok_and(|v| v == "1") {
        panic!("{test}: {missing}, and {REQUIRE_ALL}=1 forbids skipping");
    }
    // `eprintln!` would be captured with the passing test's output; the handle itself is not.
    let _ = writeln!(std::io::stderr(), "skipped: {test}: {missing}");
    if let Ok(mut log) =
        std::fs::OpenOptions::new().create(true).append(true).open(skip_log(std::os::unix::process::parent_id()))
    {
        let _ = writeln!(log, "{test}\t{missing}");
    }
    false
}

/// Returns from the test when `$prerequisite` is missing (see the module doc).
macro_rules! require {
    ($prerequisite:expr) => {
        if !$crate::prerequisites::check($prerequisite) {
            return;
        }
    };
}
pub(crate) use require;

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// Runs one cluster test of this very binary with a PATH that hides redis-server.
    fn cluster_test_without_redis(require_all: bool) -> std::process::Output {
        let empty = tempfile::tempdir().unwrap();
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args(["--exact", "cluster::people_on_different_nodes_chat_as_on_one", "--test-threads", "1"])
            .env("PATH", empty.path())
            .env_remove(REQUIRE_ALL);
        if require_all {
            command.env(REQUIRE_ALL, "1");
        }
        let output = command.output().unwrap();
        let _ = std::fs::remove_file(skip_log(std::process::id()));
        output
    }

    #[test]
    fn a_missing_redis_server_skips_with_a_line_and_fails_under_require_all() {
        let skipped = cluster_test_without_redis(false);
        let stdout = String::from_utf8_lossy(&skipped.stdout);
        let stderr = String::from_utf8_lossy(&skipped.stderr);
        assert!(skipped.status.success(), "a skip is not a failure:\n{stdout}\n{stderr}");
        assert!(stdout.contains("1 passed"), "the test ran (and returned):\n{stdout}");
        assert!(
            stderr.contains("skipped: cluster::people_on_different_nodes_chat_as_on_one: redis-server, redis-cli not on PATH (apt install redis-server)"),
            "{stderr}"
        );

        let required = cluster_test_without_redis(true);
        let stdout = String::from_utf8_lossy(&required.stdout);
        assert!(!required.status.success(), "{REQUIRE_ALL}=1 turns a skip into a failure:\n{stdout}");
        assert!(stdout.contains("redis-server, redis-cli not on PATH") && stdout.contains(REQUIRE_ALL), "{stdout}");
    }
}
