//! The build script of the crates with system tests (`cli`, `policy`, `bench`): with
//! `WEFT_SYSTEM_TESTS=1` it sets `cfg(weft_system_tests)`, and the system tests (root, network
//! namespaces, a browser, etcd, other system programs) run; without it, `cargo test` lists
//! each of them as ignored, with the reason, so the summary says what did not run.
//! (`cargo test -- --ignored` runs them anyway, and they then fail loudly on a missing tool.)

fn main() {
    println!("cargo::rustc-check-cfg=cfg(weft_system_tests)");
    println!("cargo::rerun-if-env-changed=WEFT_SYSTEM_TESTS");
    if std::env::var("WEFT_SYSTEM_TESTS").is_ok_and(|v| v == "1") {
        println!("cargo::rustc-cfg=weft_system_tests");
    }
}
