//! The README's first curl session, run as it stands by bash against the
//! real binary in its embedded default (SQLite, local storage, the `dev`
//! providers), from the directory kiln runs in as the README says. Only
//! the address line (`B=http://127.0.0.1:8080`) is changed to where this
//! test's kiln listens. It must print a finished generation and a finished
//! upscale with their sizes and links.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::process::Command;

use common::{free_addr, kiln};

/// The first `sh` block after "## A first session with curl".
fn session() -> String {
    let readme = include_str!("../README.md");
    let section = readme
        .split("## A first session with curl")
        .nth(1)
        .expect("README has the curl session");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("the session is a sh block");
    block.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_curl_session_runs_as_written() {
    for tool in ["curl", "jq", "file"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .status()
            .unwrap()
            .success();
        assert!(found, "{tool} is needed (CI installs it)");
    }
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let kiln = kiln(&[])
        .cwd(dir.path())
        .env("KILN_HTTP_ADDR", addr)
        .spawn();
    kiln.wait_healthy().await;

    let script = session();
    assert!(script.starts_with("B=http://127.0.0.1:8080\n"), "{script}");
    let script = script.replacen("B=http://127.0.0.1:8080", &format!("B=http://{addr}"), 1);
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(240),
        tokio::process::Command::new("bash")
            .args(["-o", "pipefail", "-c", &script])
            .current_dir(dir.path())
            .output(),
    )
    .await
    .expect("the session finished within 4 minutes")
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{stdout}\n{stderr}\n{}",
        kiln.log_text()
    );

    // The generation, downloaded: a real PNG of the size asked for.
    assert!(stdout.contains("\"state\": \"succeeded\""), "{stdout}");
    assert!(stdout.contains("PNG image data, 512 x 512"), "{stdout}");
    // The upscale: twice the size, with its link.
    let upscale = stdout
        .split("\"width\": 1024")
        .nth(1)
        .unwrap_or_else(|| panic!("no 1024-wide upscale printed: {stdout}"));
    assert!(upscale.contains("\"height\": 1024"), "{stdout}");
    assert!(stdout.contains("\"url\": \"/v1/files/"), "{stdout}");
    assert!(!stdout.contains("\"url\": null"), "{stdout}");
    // The follow-up upscale of the one-request example.
    assert!(stdout.contains("\"parent_id\": \""), "{stdout}");
    assert!(stdout.matches("\"width\": 1024").count() >= 2, "{stdout}");
}
