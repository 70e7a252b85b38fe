//! The documentation against the code:
//!
//! - `docs/configuration.md` holds the flag tables rendered from the clap
//!   definitions (`microshop::config_doc`); a change of a flag, variable,
//!   default or help text fails here until the page is regenerated with
//!   `MICROSHOP_UPDATE_DOCS=1 cargo test -p microshop --test docs`;
//! - every flag and variable that `microshop <command> --help` prints (the
//!   real binary) is on that page.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use microshop::config_doc;

/// The commands whose `--help` is checked.
const COMMANDS: &[&[&str]] = &[
    &["up"],
    &["serve"],
    &["demo"],
    &["bench"],
    &["sagas"],
    &["sagas", "list"],
    &["sagas", "show"],
    &["sagas", "retry"],
    &["sagas", "abort"],
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

fn configuration_page() -> PathBuf {
    repo().join("docs").join("configuration.md")
}

#[test]
fn configuration_md_matches_the_clap_definitions() {
    let path = configuration_page();
    let page = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let rendered = config_doc::render();
    let updated = config_doc::splice(&page, &rendered).unwrap_or_else(|| {
        panic!(
            "{} has no generated part: it must hold the lines\n{}\n{}\n",
            path.display(),
            config_doc::BEGIN,
            config_doc::END
        )
    });
    if updated == page {
        return;
    }
    if std::env::var_os("MICROSHOP_UPDATE_DOCS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &updated)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        eprintln!("docs: rewrote {}", path.display());
        return;
    }
    let first_difference = page
        .lines()
        .zip(updated.lines())
        .position(|(a, b)| a != b)
        .map_or_else(
            || "the pages differ in length".to_owned(),
            |i| {
                format!(
                    "line {}:\n  committed: {}\n  rendered:  {}",
                    i + 1,
                    page.lines().nth(i).unwrap_or_default(),
                    updated.lines().nth(i).unwrap_or_default()
                )
            },
        );
    panic!(
        "docs/configuration.md is out of date with the clap definitions (a flag, variable, \
         default or help text changed). Regenerate it:\n\n    \
         MICROSHOP_UPDATE_DOCS=1 cargo test -p microshop --test docs\n\n\
         and commit the result. First difference, {first_difference}"
    );
}

/// The flags (`--name`) and variables (`[env: NAME=…]`) a help text prints.
fn printed_by_help(help: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut flags = BTreeSet::new();
    let mut vars = BTreeSet::new();
    for line in help.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('-') {
            for word in trimmed.split([' ', ',']) {
                if let Some(name) = word.strip_prefix("--")
                    && !name.is_empty()
                {
                    flags.insert(format!("--{name}"));
                    break;
                }
            }
        }
        if let Some(rest) = trimmed.strip_prefix("[env: ") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            vars.insert(name);
        }
    }
    flags.remove("--help");
    (flags, vars)
}

/// Whether `page` holds `word` as a whole token (`--limit` is not found in
/// `--limit-x`).
fn holds(page: &str, word: &str) -> bool {
    page.match_indices(word).any(|(i, _)| {
        let next = page[i + word.len()..].chars().next();
        let prev = page[..i].chars().next_back();
        !next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !prev.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

#[test]
fn every_flag_of_help_is_on_the_configuration_page() {
    let page = std::fs::read_to_string(configuration_page()).expect("docs/configuration.md");
    let mut missing = Vec::new();
    let mut seen = 0;
    for command in COMMANDS {
        let out = Command::new(env!("CARGO_BIN_EXE_microshop"))
            .args(*command)
            .arg("--help")
            .output()
            .expect("microshop runs");
        assert!(
            out.status.success(),
            "microshop {} --help failed: {}",
            command.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        let help = String::from_utf8(out.stdout).expect("help is UTF-8");
        let (flags, vars) = printed_by_help(&help);
        for word in flags.iter().chain(&vars) {
            seen += 1;
            if !holds(&page, word) {
                missing.push(format!("microshop {} --help: {word}", command.join(" ")));
            }
        }
    }
    assert!(
        seen > 50,
        "too few flags parsed from --help ({seen}): did its format change?"
    );
    assert!(
        missing.is_empty(),
        "printed by --help but not in docs/configuration.md (regenerate it with \
         MICROSHOP_UPDATE_DOCS=1 cargo test -p microshop --test docs):\n{}",
        missing.join("\n")
    );
}
