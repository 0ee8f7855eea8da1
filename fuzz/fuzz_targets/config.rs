//! The configuration loader: YAML text, and `OBLETH_*` overrides, into a
//! validated `Config` or problems with file:line:column. It must never
//! panic, nor may printing what it found.
//!
//! Input: the YAML text, then optionally a NUL byte and lines of overrides,
//! each a byte choosing the variable of `ENV_OVERRIDES` and its value.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use obleth::config::{Config, ENV_OVERRIDES};

fuzz_target!(|data: &[u8]| {
    let (text, env) = match data.iter().position(|b| *b == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let env: Vec<(&str, String)> = env
        .split(|b| *b == b'\n')
        .filter_map(|line| {
            let (which, value) = line.split_first()?;
            let name = ENV_OVERRIDES[usize::from(*which) % ENV_OVERRIDES.len()].name;
            Some((name, String::from_utf8_lossy(value).into_owned()))
        })
        .collect();
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    };
    match Config::parse(text, Path::new("fuzz.yaml"), lookup) {
        Ok(config) => {
            let _ = config.declares_llm();
            let _ = config.summary();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
