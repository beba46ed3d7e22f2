//! Embeds the eBPF object built by `cargo xtask build-ebpf`.
//!
//! The object is taken from `$CPN_EBPF_OBJECT` (set by xtask) or from the default output path.
//! When neither exists, an empty object is embedded so that `cargo check`, clippy and unit tests
//! work without the eBPF toolchain; `cpn-agent run` then refuses to start and says how to build it.

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=CPN_EBPF_OBJECT");
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let source = env::var_os("CPN_EBPF_OBJECT").map_or_else(
        || manifest_dir.join("../target/ebpf/cpn.bpf.o"),
        PathBuf::from,
    );
    println!("cargo:rerun-if-changed={}", source.display());
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("cpn.bpf.o");
    if source.exists() {
        fs::copy(&source, &out).expect("copy the eBPF object into OUT_DIR");
    } else {
        println!(
            "cargo:warning=no eBPF object at {}: cpn-agent is built without its data plane; \
             run `cargo xtask build-ebpf` first",
            source.display()
        );
        fs::write(&out, []).expect("write an empty placeholder object into OUT_DIR");
    }
}
