//! The dashboard and the demo page in a real headless Chromium (Debian's, driven by
//! playwright-core from the npm registry; `tests/browser/`): the dashboard's wrong password,
//! login, live overview (its screenshot is kept in `target/tmp/browser/`), lookup and revoke by
//! clicking, and requests without the session cookie refused; two people chatting on `/demo`, one
//! reloading without losing a message.

use std::path::Path;

use crate::prerequisites::{Prerequisite, require};

fn npm(dir: &Path, args: &[&str]) {
    let screenshots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    crate::harness::npm(dir, args, &[("SCREENSHOT_DIR", screenshots.as_os_str())]);
}

#[test]
fn the_dashboard_and_the_demo_work_in_a_headless_browser() {
    require!(Prerequisite::Chromium);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    npm(&dir, &["ci", "--no-progress"]);
    npm(&dir, &["test"]);
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser/admin-overview.png");
    assert!(screenshot.metadata().is_ok_and(|m| m.len() > 5_000), "{} was not written", screenshot.display());
}
