//! The agent's TOML configuration.
//!
//! Errors name the file, the line and the key, and say what would be valid.

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use toml::Spanned;

use crate::dataplane::{AttachMode, Pinning, Program, default_pin_dir};

/// Longest interface name Linux accepts (`IFNAMSIZ` minus the NUL).
const MAX_INTERFACE_NAME: usize = 15;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: Node,
    #[serde(default)]
    pub dataplane: DataplaneConfig,
    /// `[[interface]]` tables: which program runs on which interface.
    #[serde(rename = "interface", default)]
    pub interfaces: Vec<Interface>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// This node's name, as operators and other agents see it.
    pub name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataplaneConfig {
    /// bpffs directory for the pinned maps (default `/sys/fs/bpf/cpn`). Several agents on one
    /// host (e.g. one per network namespace in a lab) need one directory each.
    pub pin_dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    pub name: Spanned<String>,
    /// `steer` (ingress: clients' side) or `endpoint` (compute node or transit: SIDs).
    pub program: Program,
    /// `native` (default), `generic` or `offload`.
    #[serde(default)]
    pub mode: AttachMode,
}

impl Config {
    /// Where the maps are pinned.
    pub fn pinning(&self) -> Pinning {
        Pinning::Dir(
            self.dataplane
                .pin_dir
                .clone()
                .unwrap_or_else(|| default_pin_dir().to_path_buf()),
        )
    }
}

/// A configuration error, located in its file.
#[derive(Debug)]
pub struct Error {
    path: PathBuf,
    /// 1-based line, when the error has a place in the file.
    line: Option<usize>,
    message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.path.display(), self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for Error {}

/// Reads and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error {
        path: path.to_owned(),
        line: None,
        message: format!("cannot read the configuration: {e}"),
    })?;
    parse(path, &text)
}

/// Parses and validates configuration text; `path` is only used in messages.
pub fn parse(path: &Path, text: &str) -> Result<Config, Error> {
    let error = |offset: Option<usize>, message: String| Error {
        path: path.to_owned(),
        line: offset.map(|o| line_of(text, o)),
        message,
    };
    let config: Config = toml::from_str(text)
        .map_err(|e| error(e.span().map(|s| s.start), e.message().trim_end().to_owned()))?;
    if config.node.name.trim().is_empty() {
        return Err(error(None, "[node] name: must not be empty".into()));
    }
    if config.interfaces.is_empty() {
        return Err(error(
            None,
            "no [[interface]] given: add one per interface with `name` and `program` \
             (\"steer\" or \"endpoint\")"
                .into(),
        ));
    }
    let mut seen = HashMap::new();
    for interface in &config.interfaces {
        let name = interface.name.get_ref();
        let at = Some(interface.name.span().start);
        if name.is_empty() || name.len() > MAX_INTERFACE_NAME || name.contains(['/', ' ']) {
            return Err(error(
                at,
                format!(
                    "[[interface]] name = {name:?}: not a Linux interface name (1 to \
                     {MAX_INTERFACE_NAME} bytes, no '/' or spaces)"
                ),
            ));
        }
        if let Some(first) = seen.insert(name.clone(), line_of(text, interface.name.span().start)) {
            return Err(error(
                at,
                format!(
                    "[[interface]] name = {name:?}: already configured at line {first}; an \
                     interface runs one XDP program"
                ),
            ));
        }
    }
    Ok(config)
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Config, String> {
        parse(Path::new("agent.toml"), text).map_err(|e| e.to_string())
    }

    const GOOD: &str = r#"
[node]
name = "ingress1"

[dataplane]
pin_dir = "/sys/fs/bpf/cpn-lab"

[[interface]]
name = "eth0"
program = "steer"

[[interface]]
name = "eth1"
program = "endpoint"
mode = "generic"
"#;

    #[test]
    fn parses_a_full_config() {
        let config = parse_str(GOOD).unwrap();
        assert_eq!(config.node.name, "ingress1");
        assert_eq!(config.pinning(), Pinning::Dir("/sys/fs/bpf/cpn-lab".into()));
        assert_eq!(config.interfaces.len(), 2);
        assert_eq!(config.interfaces[0].program, Program::Steer);
        assert_eq!(config.interfaces[0].mode, AttachMode::Native);
        assert_eq!(config.interfaces[1].mode, AttachMode::Generic);
    }

    #[test]
    fn default_pin_dir_is_sys_fs_bpf_cpn() {
        let config =
            parse_str("[node]\nname = \"a\"\n[[interface]]\nname = \"x\"\nprogram = \"steer\"\n")
                .unwrap();
        assert_eq!(config.pinning(), Pinning::Dir("/sys/fs/bpf/cpn".into()));
    }

    #[test]
    fn unknown_program_names_line_and_choices() {
        let err = parse_str(&GOOD.replace("\"endpoint\"", "\"end\"")).unwrap_err();
        assert!(err.starts_with("agent.toml:14: "), "{err}");
        assert!(err.contains("steer") && err.contains("endpoint"), "{err}");
    }

    #[test]
    fn unknown_key_is_rejected_with_its_line() {
        let err = parse_str(&GOOD.replace("mode = \"generic\"", "mdoe = \"generic\"")).unwrap_err();
        assert!(err.starts_with("agent.toml:15: "), "{err}");
        assert!(err.contains("mdoe"), "{err}");
    }

    #[test]
    fn duplicate_interface_names_both_lines() {
        let err = parse_str(&GOOD.replace("\"eth1\"", "\"eth0\"")).unwrap_err();
        assert!(err.starts_with("agent.toml:13: "), "{err}");
        assert!(err.contains("already configured at line 9"), "{err}");
    }

    #[test]
    fn overlong_interface_name_is_rejected() {
        let err = parse_str(&GOOD.replace("\"eth1\"", "\"a-very-long-interface\"")).unwrap_err();
        assert!(err.starts_with("agent.toml:13: "), "{err}");
    }

    #[test]
    fn no_interfaces_is_an_error() {
        let err = parse_str("[node]\nname = \"a\"\n").unwrap_err();
        assert!(err.contains("no [[interface]]"), "{err}");
    }
}
