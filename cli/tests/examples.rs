//! The resource sets in `examples/` are valid as a user would check them: `weft policy check`
//! passes on every one, and each is listed in `examples/README.md`. (That `examples/demo` is
//! exactly what `weft demo` serves is a unit test of the demo's resources.)
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn policy_check(dir: &Path) -> (bool, String) {
    let out = Command::new(WEFT)
        .args(["policy", "check"])
        .arg(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn every_example_passes_weft_policy_check_and_is_listed() {
    let root = examples();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let names: Vec<String> = dirs
        .iter()
        .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in [
        "demo",
        "canary",
        "header-route",
        "default-deny",
        "fault-injection",
        "opaque-database",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "examples/{want} is missing"
        );
    }
    for (dir, name) in dirs.iter().zip(&names) {
        let (ok, text) = policy_check(dir);
        assert!(ok, "weft policy check examples/{name} failed:\n{text}");
        assert!(text.contains(": valid ("), "examples/{name}: {text}");
        assert!(
            readme.contains(&format!("]({name}/)")),
            "examples/{name} is not listed in examples/README.md"
        );
        // Every file holds resources (an empty file would pass the check and show nothing).
        for file in std::fs::read_dir(dir).unwrap() {
            let file = file.unwrap().path();
            let text = std::fs::read_to_string(&file).unwrap();
            assert!(
                text.lines().any(|l| l.starts_with("kind: ")),
                "{} holds no resource",
                file.display()
            );
        }
    }
}

/// The check above can fail: an example with a dangling reference is refused, naming it.
#[test]
fn a_broken_copy_of_an_example_is_refused() {
    let copy = tempfile::tempdir().unwrap();
    for file in std::fs::read_dir(examples().join("canary")).unwrap() {
        let file = file.unwrap().path();
        let text = std::fs::read_to_string(&file).unwrap();
        let text = text.replace(
            "name: api-canary, port: 8080",
            "name: api-canery, port: 8080",
        );
        std::fs::write(copy.path().join(file.file_name().unwrap()), text).unwrap();
    }
    let (ok, text) = policy_check(copy.path());
    assert!(!ok, "{text}");
    assert!(
        text.contains("default/api-canery, which does not exist"),
        "{text}"
    );
}
