//! `weft-policy`: the control plane as its own binary (same as `weft policy`).
fn main() {}
