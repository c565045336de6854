//! The dashboard in a real browser: headless Debian Chromium, as the
//! dashboard tests drive it (screenshots and DOM dumps go to tests/artifacts/).

use std::path::PathBuf;

use crate::TestApi;

fn chromium() -> &'static str {
    for candidate in [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ] {
        if std::path::Path::new(candidate).exists() {
            return candidate;
        }
    }
    panic!("Chromium is required for the dashboard test: apt-get install chromium (scripts/test.sh installs it)");
}

pub fn artifacts() -> PathBuf {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/artifacts"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Run headless Chromium on `path`, giving the page's scripts time to fetch and render.
/// Async, so the in-process api keeps serving while the browser waits on it.
pub async fn browse(api: &TestApi, path: &str, extra: &[String]) -> String {
    let profile = tempdir();
    let url = format!("{}#key={}", api.url(path), api.admin_key);
    let output = tokio::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--no-first-run",
            "--virtual-time-budget=20000",
            "--window-size=1280,1700",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(&url)
        .output()
        .await
        .expect("run chromium");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "marquee-chromium-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}
