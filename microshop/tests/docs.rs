//! The documentation against the code:
//!
//! - `docs/configuration.md` holds the flag tables rendered from the clap
//!   definitions (`microshop::config_doc`); a change of a flag, variable,
//!   default or help text fails here until the page is regenerated with
//!   `MICROSHOP_UPDATE_DOCS=1 cargo test -p microshop --test docs`;
//! - every flag and variable that `microshop <command> --help` prints (the
//!   real binary) is on that page;
//! - every relative link of `README.md` and `docs/*.md` reaches a file of
//!   the repository, and every `#anchor` a heading of its page.

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

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces
/// as hyphens.
fn anchor_of(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(page: &str) -> BTreeSet<String> {
    let mut fenced = false;
    page.lines()
        .filter(|l| {
            if l.starts_with("```") {
                fenced = !fenced;
            }
            !fenced
        })
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| anchor_of(l.trim_start_matches('#')))
        .collect()
}

/// The targets of the Markdown links `[text](target)` of `page`, outside
/// code blocks.
fn links(page: &str) -> Vec<String> {
    let mut fenced = false;
    let mut found = Vec::new();
    for line in page.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else {
                break;
            };
            found.push(after[..end].to_owned());
            rest = &after[end..];
        }
    }
    found
}

#[test]
fn links_of_readme_and_docs_resolve() {
    let root = repo();
    let mut pages = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in &pages {
        let text = std::fs::read_to_string(page).expect("a page");
        let dir = page.parent().expect("a directory");
        for target in links(&text) {
            if target.starts_with("http://")
                || target.starts_with("https://")
                || target.starts_with("mailto:")
            {
                continue;
            }
            checked += 1;
            let (file, anchor) = match target.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (target.as_str(), None),
            };
            let resolved = if file.is_empty() {
                page.clone()
            } else {
                dir.join(file)
            };
            let name = page
                .strip_prefix(&root)
                .unwrap_or(page)
                .display()
                .to_string();
            if !resolved.exists() {
                broken.push(format!("{name}: {target} (no such file)"));
                continue;
            }
            let inside = resolved
                .canonicalize()
                .is_ok_and(|p| p.starts_with(root.canonicalize().expect("the root")));
            if !inside {
                broken.push(format!("{name}: {target} (outside the repository)"));
                continue;
            }
            if let Some(anchor) = anchor
                && resolved.extension().is_some_and(|e| e == "md")
            {
                let target_text = std::fs::read_to_string(&resolved).expect("a page");
                if !anchors(&target_text).contains(anchor) {
                    broken.push(format!("{name}: {target} (no such heading)"));
                }
            }
        }
    }
    assert!(checked > 10, "too few links found ({checked})");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}
