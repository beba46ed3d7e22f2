//! Golden JSON files (`tests/golden/NAME.json`) for answers whose shape and values are stable.
//! Values that change from run to run (counters, timings) are masked by key before comparing.
//! `CPN_BLESS=1` rewrites the files from the current answers.

use std::path::PathBuf;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;

/// Replaces the value of every object key in `keys`, at any depth, with `"<varies>"`.
pub fn mask(value: &mut Value, keys: &[&str]) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if keys.contains(&k.as_str()) {
                    *v = Value::String("<varies>".into());
                } else {
                    mask(v, keys);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| mask(v, keys)),
        _ => {}
    }
}

/// Compares `value` with the golden file `name`.
pub fn check(name: &str, value: &Value) -> Result<()> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(format!("{name}.json"));
    let text = serde_json::to_string_pretty(value)? + "\n";
    if std::env::var_os("CPN_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().context("golden dir")?)?;
        std::fs::write(&path, &text)?;
        return Ok(());
    }
    let golden = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} (CPN_BLESS=1 writes it)", path.display()))?;
    ensure!(
        golden == text,
        "{} differs from the answer (CPN_BLESS=1 rewrites it if the change is meant):\n{text}",
        path.display()
    );
    Ok(())
}
