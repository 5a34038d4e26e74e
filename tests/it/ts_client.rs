//! The TypeScript client (`clients/ts`): its own tests, with Node, against this build's server
//! binary: installed from the lockfile, generated from the proto, compiled, run. They kill the
//! server mid-stream and check the client resumes with nothing lost (`test/resume.test.ts`); and
//! the demo page's committed bundle is what the sources build.

use std::path::Path;

use crate::prerequisites::{Prerequisite, require};

fn npm(dir: &Path, args: &[&str]) {
    crate::harness::npm(dir, args, &[]);
}

#[test]
fn the_typescript_client_resumes_through_a_server_crash() {
    require!(Prerequisite::Node);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/ts");
    // From the lockfile, every time (a few seconds): what the test runs is what is committed.
    npm(&dir, &["ci", "--no-progress"]);
    npm(&dir, &["test"]);
    // The demo page's script is the client's bundle, committed and compiled into the server: it
    // must be what the client's sources build now. (Here, not in a test of its own: two `npm`
    // runs in one directory at once would trip over each other.)
    let bundle = dir.join("demo/dist/demo.js");
    let committed = std::fs::read(&bundle).expect("the committed bundle");
    npm(&dir, &["run", "build:demo"]);
    let built = std::fs::read(&bundle).expect("the rebuilt bundle");
    assert!(
        committed == built,
        "clients/ts/demo/dist/demo.js was stale: `npm run build:demo` in clients/ts rebuilt it; commit it"
    );
}
