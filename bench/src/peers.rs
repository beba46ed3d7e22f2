//! The BPF programs measured next to cpn, built with clang at bench time and never committed:
//!
//! - `xdp_noop`, `xdp_sink` and `xdp_gen` from `bench/bpf/baselines.c` (ours): the cost
//!   floor, the throughput sink and the traffic generator;
//! - the Katran-like balancer: the kernel's own selftest program `test_xdp_noinline.c`, taken
//!   from Debian's `linux-source` package.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// Our baselines' source.
const BASELINES_SOURCE: &str = include_str!("../bpf/baselines.c");
/// Where the selftest program sits inside the kernel source tree.
const KATRAN_MEMBER: &str = "tools/testing/selftests/bpf/progs/test_xdp_noinline.c";

/// The built objects.
#[derive(Debug)]
pub struct Peers {
    /// `bench/bpf/baselines.c`, built.
    pub baselines: PathBuf,
    pub katran: PathBuf,
    /// The kernel source tarball the balancer came from.
    pub katran_source: String,
}

/// Builds both objects under `dir` (reusing what an earlier run extracted).
pub fn build(dir: &Path) -> Result<Peers> {
    std::fs::create_dir_all(dir)?;
    let includes = include_dirs(dir)?;
    let baselines_c = dir.join("baselines.c");
    std::fs::write(&baselines_c, BASELINES_SOURCE)?;
    let baselines = dir.join("baselines.o");
    clang(&baselines_c, &baselines, &includes)?;

    let tarball = kernel_source_tarball()?;
    let name = tarball
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    let tree = dir.join(name.trim_end_matches(".tar.xz"));
    let source = if let Some(path) = find_member(&tree) {
        path
    } else {
        std::fs::create_dir_all(&tree)?;
        eprintln!(
            "bench: extracting {KATRAN_MEMBER} from {}",
            tarball.display()
        );
        run(Command::new("tar")
            .arg("-xJf")
            .arg(&tarball)
            .arg("-C")
            .arg(&tree)
            .arg("--wildcards")
            .arg(format!("*/{KATRAN_MEMBER}")))?;
        find_member(&tree)
            .with_context(|| format!("{} has no {KATRAN_MEMBER}", tarball.display()))?
    };
    let katran = dir.join("test_xdp_noinline.o");
    clang(&source, &katran, &includes)?;
    Ok(Peers {
        baselines,
        katran,
        katran_source: name,
    })
}

fn find_member(tree: &Path) -> Option<PathBuf> {
    let top = std::fs::read_dir(tree).ok()?;
    top.flatten()
        .map(|entry| entry.path().join(KATRAN_MEMBER))
        .find(|path| path.exists())
}

/// Debian's `linux-source` package ships the tree as `/usr/src/linux-source-<v>.tar.xz`.
fn kernel_source_tarball() -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/src")
        .context("reading /usr/src")?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("linux-source-") && n.ends_with(".tar.xz"))
        })
        .collect();
    found.sort();
    found.pop().context(
        "no /usr/src/linux-source-*.tar.xz: install Debian's linux-source package (`cargo xtask \
         setup` does)",
    )
}

/// Header directories for `-target bpf`: the multiarch directory (for `asm/types.h`), and an
/// empty `gnu/stubs-32.h`, which glibc's headers ask for when the target is not x86-64.
fn include_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let stubs = dir.join("include");
    std::fs::create_dir_all(stubs.join("gnu"))?;
    std::fs::write(stubs.join("gnu/stubs-32.h"), "")?;
    let multiarch = format!("/usr/include/{}-linux-gnu", std::env::consts::ARCH);
    Ok(vec![stubs, PathBuf::from(multiarch)])
}

fn clang(source: &Path, object: &Path, includes: &[PathBuf]) -> Result<()> {
    let mut command = Command::new("clang");
    command.args(["-O2", "-g", "-target", "bpf", "-w", "-c"]);
    for dir in includes {
        command.arg("-I").arg(dir);
    }
    command.arg(source).arg("-o").arg(object);
    run(&mut command).context("clang and libbpf-dev are needed (`cargo xtask setup`)")
}

fn run(command: &mut Command) -> Result<()> {
    let output = command
        .output()
        .with_context(|| format!("starting {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
