//! The dashboard and the demo page in a real headless Chromium (Debian's, driven by
//! playwright-core from the npm registry; `tests/browser/`): the dashboard's wrong password,
//! login, live overview (its screenshot is kept in `target/tmp/browser/`), lookup and revoke by
//! clicking, and requests without the session cookie refused; two people chatting on `/demo`, one
//! reloading without losing a message.

use std::path::Path;
use std::process::Command;

use crate::prerequisites::{Prerequisite, require};

fn npm(dir: &Path, args: &[&str]) {
    let screenshots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    let output = Command::new("npm")
        .args(args)
        .current_dir(dir)
        .env("TIDINGS_BIN", env!("CARGO_BIN_EXE_tidings"))
        .env("SCREENSHOT_DIR", &screenshots)
        .env("npm_config_fund", "false")
        .env("npm_config_audit", "false")
        .output()
        .expect("npm runs");
    assert!(
        output.status.success(),
        "npm {}: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
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
