//! Programs some tests need from outside Cargo (`redis-server`, a CQL node named by
//! `TIDINGS_SCYLLA_NODES`).
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
/// Prerequisites that may still be skipped under `REQUIRE_ALL` (comma-separated names: `scylla`):
/// `.ci/run` sets it when there is no CQL node to start.
pub const ALLOW_SKIP: &str = "TIDINGS_TEST_ALLOW_SKIP";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prerequisite {
    /// `redis-server` and `redis-cli`: the cluster tests start private Redis servers and clusters.
    Redis,
    /// A CQL node (ScyllaDB or Cassandra) named by `TIDINGS_SCYLLA_NODES`: the ScyllaDB store's tests.
    Scylla,
    /// A three-node CQL cluster started by `cql-node/cluster.sh up 3 PORT BASE`, named by
    /// `TIDINGS_SCYLLA_CLUSTER=BASE`: the failover test kills and restarts its nodes.
    ScyllaCluster,
    /// `node` and `npm` (Node 20 or later): the TypeScript client's tests.
    Node,
    /// `chromium` (with `node` and `npm`): the dashboard's tests in a headless browser.
    Chromium,
}

/// The base directory of a CQL cluster made by `cluster.sh` (its nodes' settings are in
/// `BASE/nodeI/node.env`).
pub const SCYLLA_CLUSTER: &str = "TIDINGS_SCYLLA_CLUSTER";

/// A CQL cluster the test may stop and start nodes of.
pub struct CqlCluster {
    pub base: PathBuf,
    /// `host:port` of node 1, 2, 3.
    pub nodes: Vec<String>,
}

impl CqlCluster {
    pub fn from_env() -> Option<Self> {
        let base = PathBuf::from(std::env::var_os(SCYLLA_CLUSTER)?);
        let nodes = (1..=3)
            .map(|i| {
                let env = std::fs::read_to_string(base.join(format!("node{i}/node.env"))).ok()?;
                let value = |key: &str| env.lines().find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_owned));
                Some(format!("{}:{}", value("ADDR")?, value("PORT")?))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Self { base, nodes })
    }

    /// `cluster.sh`, beside this repository (`../shared/cql-node`) unless `TIDINGS_CQL_NODE_HOME`
    /// names its folder.
    fn script() -> PathBuf {
        let home = std::env::var_os("TIDINGS_CQL_NODE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/cql-node"));
        home.join("cluster.sh")
    }

    /// SIGKILLs node `i` (1-based).
    pub fn kill(&self, i: usize) {
        let status = std::process::Command::new(Self::script())
            .arg("stop")
            .arg(&self.base)
            .arg(i.to_string())
            .arg("--kill")
            .status()
            .expect("cluster.sh runs");
        assert!(status.success(), "cluster.sh stop {i} --kill");
    }

    /// Starts node `i` again and waits until the cluster is whole.
    pub fn restart(&self, i: usize) {
        let status = std::process::Command::new(Self::script())
            .arg("start")
            .arg(&self.base)
            .arg(i.to_string())
            .stdout(std::process::Stdio::null())
            .status()
            .expect("cluster.sh runs");
        assert!(status.success(), "cluster.sh start {i}");
    }
}

/// Where the ScyllaDB store's tests find a CQL node: contact points, `host:port,...`.
pub const SCYLLA_NODES: &str = "TIDINGS_SCYLLA_NODES";

/// The contact points, when set.
pub fn scylla_nodes() -> Option<Vec<String>> {
    let nodes = std::env::var(SCYLLA_NODES).ok()?;
    let nodes: Vec<String> = nodes.split(',').map(|n| n.trim().to_owned()).filter(|n| !n.is_empty()).collect();
    (!nodes.is_empty()).then_some(nodes)
}

impl Prerequisite {
    fn name(self) -> &'static str {
        match self {
            Prerequisite::Redis => "redis",
            Prerequisite::Scylla => "scylla",
            Prerequisite::ScyllaCluster => "scylla-cluster",
            Prerequisite::Node => "node",
            Prerequisite::Chromium => "chromium",
        }
    }

    fn programs(self) -> &'static [&'static str] {
        match self {
            Prerequisite::Redis => &["redis-server", "redis-cli"],
            Prerequisite::Node => &["node", "npm"],
            Prerequisite::Chromium => &["chromium", "node", "npm"],
            Prerequisite::Scylla | Prerequisite::ScyllaCluster => &[],
        }
    }

    fn how_to_get(self) -> &'static str {
        match self {
            Prerequisite::Redis => "apt install redis-server",
            Prerequisite::Node => "apt install nodejs npm, or nodejs.org",
            Prerequisite::Chromium => "apt install chromium nodejs npm",
            Prerequisite::Scylla => "run a CQL node and set it; .ci/run starts one from ../shared/cql-node",
            Prerequisite::ScyllaCluster => "cluster.sh up 3 PORT BASE from ../shared/cql-node, then set it to BASE",
        }
    }

    /// `None` when everything is there, or the line that says what is missing and how to get it.
    fn missing(self) -> Option<&'static str> {
        static REDIS: OnceLock<Option<String>> = OnceLock::new();
        static SCYLLA: OnceLock<Option<String>> = OnceLock::new();
        static CLUSTER: OnceLock<Option<String>> = OnceLock::new();
        static NODE: OnceLock<Option<String>> = OnceLock::new();
        static CHROMIUM: OnceLock<Option<String>> = OnceLock::new();
        if self == Prerequisite::ScyllaCluster {
            return CLUSTER
                .get_or_init(|| {
                    CqlCluster::from_env()
                        .is_none()
                        .then(|| format!("{SCYLLA_CLUSTER} does not name a three-node cluster ({})", self.how_to_get()))
                })
                .as_deref();
        }
        if self == Prerequisite::Scylla {
            return SCYLLA
                .get_or_init(|| {
                    scylla_nodes().is_none().then(|| format!("{SCYLLA_NODES} is not set ({})", self.how_to_get()))
                })
                .as_deref();
        }
        let cell = match self {
            Prerequisite::Redis => &REDIS,
            Prerequisite::Node => &NODE,
            Prerequisite::Chromium => &CHROMIUM,
            Prerequisite::Scylla | Prerequisite::ScyllaCluster => unreachable!("answered above"),
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
    let allowed = std::env::var(ALLOW_SKIP).is_ok_and(|v| v.split(',').any(|name| name.trim() == prerequisite.name()));
    if std::env::var(REQUIRE_ALL).is_ok_and(|v| v == "1") && !allowed {
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
