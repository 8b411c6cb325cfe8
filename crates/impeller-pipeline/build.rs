//! The code version that pipeline cache keys and run records carry: the crate version and,
//! when built from a git checkout, its commit.

use std::process::Command;

fn main() {
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let code = match commit {
        Some(c) => format!("{version}+{c}"),
        None => version,
    };
    println!("cargo:rustc-env=IMPELLER_CODE_VERSION={code}");
    // A new commit changes the version; these files move when one is made or checked out.
    // (Only paths that exist: cargo reruns the script every build for a missing one.)
    println!("cargo:rerun-if-changed=build.rs");
    for git in ["../../.git/HEAD", "../../.git/refs/heads", "../../.git/packed-refs"] {
        if std::path::Path::new(git).exists() {
            println!("cargo:rerun-if-changed={git}");
        }
    }
}
