//! One run of a `microshop` command that ends by itself (the operator's
//! `microshop sagas …`): spawned through [`Spawn`] like every process of
//! the tests (none of the test's `MICROSHOP_*` variables, stdin from
//! /dev/null, so it never has a terminal to ask at), awaited with a bound,
//! and checked with [`Run::exits`], [`Run::says`] and [`Run::json`].

use std::{ffi::OsStr, time::Duration};

use serde_json::Value;

use super::process::Spawn;

/// How long one CLI run may take.
pub const CLI_WITHIN: Duration = Duration::from_secs(90);

/// How a run ended and what it wrote.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Its stdout as one JSON document.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {self:#?}"))
    }

    #[track_caller]
    pub fn exits(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "exit code: {self:#?}");
        self
    }

    /// Every needle is in its stdout or stderr.
    #[track_caller]
    pub fn says(&self, needles: &[&str]) -> &Self {
        let all = format!("{}\n{}", self.stdout, self.stderr);
        for needle in needles {
            assert!(
                all.contains(needle),
                "{needle:?} not in the output: {self:#?}"
            );
        }
        self
    }
}

/// Runs `microshop ARGS` with `env` and waits (within [`CLI_WITHIN`]) for
/// it to exit.
pub fn run<V: AsRef<OsStr>>(env: &[(&str, V)], args: &[&str]) -> Run {
    let mut process = Spawn::microshop(format!("microshop {}", args.join(" ")))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .spawn();
    let exited = process.exit_within(CLI_WITHIN).unwrap_or_else(|stderr| {
        panic!("microshop {args:?} still runs after {CLI_WITHIN:?}; stderr: {stderr}")
    });
    Run {
        code: exited.status.code().unwrap_or(-1),
        stdout: exited.stdout,
        stderr: exited.stderr,
    }
}

/// `microshop sagas ARGS` with `env`.
pub fn sagas_with<V: AsRef<OsStr>>(env: &[(&str, V)], args: &[&str]) -> Run {
    let mut all = vec!["sagas"];
    all.extend_from_slice(args);
    run(env, &all)
}

/// `microshop sagas ARGS`.
pub fn sagas(args: &[&str]) -> Run {
    sagas_with::<&str>(&[], args)
}

/// The ids (`key`) of the entries of a `{"sagas": [...]}` or
/// `{"results": [...]}` document's `list`.
pub fn ids(doc: &Value, list: &str, key: &str) -> Vec<String> {
    doc[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list:?} array in {doc:#}"))
        .iter()
        .map(|s| s[key].as_str().expect("an id").to_owned())
        .collect()
}
