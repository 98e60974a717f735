//! The house rules a reader relies on, checked on every run: no source file over 700
//! lines and no function over 100 (tests aside), no module importing its parent's
//! items, tests that take their ports from the system rather than guessing free ones
//! and say why they sleep, and a repository that stands alone (protocol rules cited as
//! RFC sections or from docs/, no citation of the development environment's
//! `../shared/spec` or its ARCHITECTURE.md; the SCTP VM and benchmark baselines are
//! tools that live there, not citations).
//!
//! The files and functions still over the limits are listed below by name, each a
//! known debt (issue 20); the list may only shrink: an entry that is no longer over
//! its limit fails the test too, so it is taken off when the debt is paid.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::disallowed_methods,
    reason = "test code"
)]

use std::path::{Path, PathBuf};

const MAX_FILE_LINES: usize = 700;
const MAX_FUNCTION_LINES: usize = 100;

/// Files over [`MAX_FILE_LINES`] (lines before their test module), to be split.
const LONG_FILES: &[&str] = &[];

/// Functions over [`MAX_FUNCTION_LINES`], as `file:name`, to be split.
const LONG_FUNCTIONS: &[&str] = &[];

/// Tests that still take a port by binding and dropping it (a race with every other
/// process on the host), to be moved to port 0 read back from the process.
const FREE_PORT_USERS: &[&str] = &[];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, relative to the repository.
fn rust_files(dir: &str) -> Vec<String> {
    files(dir, &["rs"])
}

/// Every file under `dir` whose name ends in one of `extensions`, relative to the
/// repository (build output and git's store left out).
fn files(dir: &str, extensions: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![root().join(dir)];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if !path.ends_with("target") && !path.ends_with(".git") {
                    pending.push(path);
                }
            } else if path
                .extension()
                .is_some_and(|e| extensions.iter().any(|x| e == *x))
            {
                found.push(relative(&path));
            }
        }
    }
    found.sort();
    found
}

fn source_files() -> Vec<String> {
    ["src", "proto/src", "gateways/src", "bench/src"]
        .iter()
        .flat_map(|dir| rust_files(dir))
        .collect()
}

/// A file's lines before its test module.
fn code_lines(path: &str) -> Vec<String> {
    std::fs::read_to_string(root().join(path))
        .unwrap()
        .lines()
        .take_while(|line| !line.starts_with("#[cfg(test)]"))
        .map(str::to_owned)
        .collect()
}

/// `(name, lines)` of every function: from its `fn` line to its closing brace, found by
/// counting braces outside comments and character literals (string literals in this
/// code base hold balanced braces, as format strings do).
fn functions(lines: &[String]) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        let Some(name) = function_name(line) else {
            continue;
        };
        let (mut depth, mut opened) = (0i64, false);
        for (offset, line) in lines[start..].iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let code = code.replace("'{'", "").replace("'}'", "");
            for c in code.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            if !opened && code.trim_end().ends_with(';') {
                break;
            }
            if opened && depth == 0 {
                found.push((name.clone(), offset + 1));
                break;
            }
        }
    }
    found
}

fn function_name(line: &str) -> Option<String> {
    let trimmed = line.trim_start();
    if trimmed.starts_with("//") {
        return None;
    }
    let mut words = trimmed.split_whitespace().peekable();
    while let Some(word) = words.next() {
        if word == "fn" {
            let name = words.next()?;
            let name: String = name
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            return (!name.is_empty()).then_some(name);
        }
        let modifier =
            word.starts_with("pub") || ["async", "const", "unsafe", "extern"].contains(&word);
        if !modifier {
            return None;
        }
    }
    None
}

#[test]
fn no_file_over_700_lines_and_no_function_over_100_beyond_the_known_debts() {
    let mut long_files = Vec::new();
    let mut long_functions = Vec::new();
    for file in source_files() {
        let lines = code_lines(&file);
        if lines.len() > MAX_FILE_LINES {
            long_files.push(file.clone());
        }
        for (name, length) in functions(&lines) {
            if length > MAX_FUNCTION_LINES {
                long_functions.push(format!("{file}:{name}"));
            }
        }
    }
    long_functions.sort();
    long_functions.dedup();
    same_debts(
        &long_files,
        LONG_FILES,
        &format!("over {MAX_FILE_LINES} lines"),
        "LONG_FILES",
    );
    same_debts(
        &long_functions,
        LONG_FUNCTIONS,
        &format!("over {MAX_FUNCTION_LINES} lines"),
        "LONG_FUNCTIONS",
    );
}

/// What a check `found` is exactly its list of known debts: nothing new (`what`), and
/// nothing paid still listed (take it off `list`).
fn same_debts(found: &[String], known: &[&str], what: &str, list: &str) {
    let new: Vec<&String> = found
        .iter()
        .filter(|f| !known.contains(&f.as_str()))
        .collect();
    assert!(new.is_empty(), "{what}: {new:?}");
    let paid: Vec<&&str> = known
        .iter()
        .filter(|k| !found.iter().any(|f| f == *k))
        .collect();
    assert!(paid.is_empty(), "no longer found: take {paid:?} off {list}");
}

#[test]
fn the_scanner_measures_functions() {
    let lines: Vec<String> = [
        "fn short() {",
        "    let s = format!(\"{}\", '{');",
        "}",
        "pub(crate) async fn longer(x: u8) -> u8",
        "where",
        "{",
        "    // a comment with a brace {",
        "    x",
        "}",
        "fn declared();",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    assert_eq!(
        functions(&lines),
        [("short".to_owned(), 3), ("longer".to_owned(), 6)]
    );
}

#[test]
fn tests_take_ports_from_the_system() {
    let mut users = Vec::new();
    for file in rust_files("tests") {
        let text = std::fs::read_to_string(root().join(&file)).unwrap();
        let uses = text
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .any(|line| line.contains("free_port()"));
        if uses && !file.ends_with("common/mod.rs") && !file.ends_with("structure.rs") {
            users.push(file);
        }
    }
    same_debts(
        &users,
        FREE_PORT_USERS,
        "bind-and-drop ports (free_port; bind port 0 in the process and read it back)",
        "FREE_PORT_USERS",
    );
}

/// A sleep in a test is a pause the scenario needs (load between kills, an idle time,
/// an absence to check), said in a `// Pause:` comment right above it; waiting for
/// something to happen polls it with a deadline (`eventually`) instead.
#[test]
fn every_sleep_in_the_tests_says_why() {
    let mut unexplained = Vec::new();
    for file in rust_files("tests") {
        if file.ends_with("structure.rs") {
            continue;
        }
        let text = std::fs::read_to_string(root().join(&file)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (at, line) in lines.iter().enumerate() {
            let sleeps = line.contains("sleep(") && !line.trim_start().starts_with("//");
            // The comment block right above the sleep says `Pause:` somewhere.
            let explained = lines[..at]
                .iter()
                .rev()
                .take_while(|l| l.trim_start().starts_with("//"))
                .any(|l| l.trim_start().starts_with("// Pause:"));
            if sleeps && !explained {
                unexplained.push(format!("{file}:{}", at + 1));
            }
        }
    }
    assert!(
        unexplained.is_empty(),
        "sleeps without a `// Pause:` reason (poll the condition instead): {unexplained:?}"
    );
}

#[test]
fn the_repository_cites_no_notes_outside_it() {
    let citing: Vec<String> = files("", &["rs", "md", "sh", "yaml", "toml"])
        .into_iter()
        .filter(|file| file != "tests/structure.rs")
        .filter(|file| {
            cites_outside(&std::fs::read_to_string(root().join(file)).unwrap_or_default())
        })
        .collect();
    assert!(
        citing.is_empty(),
        "citations of ../shared/spec or ../shared/ARCHITECTURE.md (cite the RFC section, or docs/): {citing:?}"
    );
}

/// Protocol rules are cited as RFC sections, rserpool's own decisions from its docs/:
/// no citation of the development environment's protocol notes (a clone does not have
/// them).
#[test]
fn the_code_cites_rfcs_and_its_own_docs_only() {
    let notes = [
        "asap.md",
        "enrp.md",
        "wire-format.md",
        "policies.md",
        "discrepancies.md",
        "rsplib-services.md",
    ];
    let mut citing = Vec::new();
    for dir in ["src", "proto", "gateways", "bench", "tests", "fuzz"] {
        for file in rust_files(dir) {
            if file.ends_with("structure.rs") {
                continue;
            }
            let text = std::fs::read_to_string(root().join(&file)).unwrap();
            // The repository's own docs/ may share a name with a note.
            let cites = notes
                .iter()
                .flat_map(|n| text.match_indices(n))
                .any(|(at, _)| !text[..at].ends_with("docs/"));
            if cites {
                citing.push(file);
            }
        }
    }
    assert!(
        citing.is_empty(),
        "cite the RFC section or docs/, not the notes: {citing:?}"
    );
}

fn cites_outside(text: &str) -> bool {
    text.contains("../shared/spec") || text.contains("../shared/ARCHITECTURE")
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Modules below the crate root that still import their parent's own items (as
/// `file: name`), to be moved into a module of their own.
const PARENT_IMPORTS: &[&str] = &[];

/// Layers point one way: a module uses its siblings and children, never items its
/// parent defines (the parent imports the child; the other way round is a cycle in
/// disguise). The crate root is exempt: its items are the crate's vocabulary.
/// Doc comments, test modules and inline modules (whose `super` is their own file) are
/// not imports.
#[test]
fn no_module_imports_its_parents_items() {
    let mut found = Vec::new();
    for file in source_files() {
        let Some((parent_file, parent_path)) = parent_of(&file) else {
            continue;
        };
        let parent = std::fs::read_to_string(root().join(&parent_file)).unwrap();
        let children = declared_modules(&parent);
        let crate_path = format!("crate::{parent_path}::");
        for line in outside_inline_modules(&code_lines(&file)) {
            for prefix in ["super::", crate_path.as_str()] {
                for name in names_after(&line, prefix) {
                    if !children.contains(&name) && name != "super" && name != "self" {
                        found.push(format!("{file}: {name}"));
                    }
                }
            }
        }
    }
    found.sort();
    found.dedup();
    same_debts(
        &found,
        PARENT_IMPORTS,
        "imports of a parent's items",
        "PARENT_IMPORTS",
    );
}

/// The file that declares `file`'s module and that module's path below the crate
/// root; `None` for the crate roots and their direct children.
fn parent_of(file: &str) -> Option<(String, String)> {
    let path = Path::new(file);
    let name = path.file_stem()?.to_str()?;
    if ["lib", "main", "mod"].contains(&name) {
        return None;
    }
    let dir = path.parent()?;
    // The benchmark crate's shared code is included into each binary by path, not
    // declared as a module tree.
    let crate_dir = ["src", "proto/src", "gateways/src"]
        .into_iter()
        .find(|root| dir.starts_with(root))?;
    let module = dir.strip_prefix(crate_dir).ok()?;
    if module.as_os_str().is_empty() {
        return None;
    }
    let flat = dir.with_extension("rs");
    let parent_file = if root().join(&flat).exists() {
        flat
    } else {
        dir.join("mod.rs")
    };
    let module_path = module.to_string_lossy().replace('/', "::");
    Some((parent_file.to_string_lossy().into_owned(), module_path))
}

/// The modules a file declares (`mod name;`, with any visibility).
fn declared_modules(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "mod")?;
            let declared = words.get(at + 1)?.strip_suffix(';')?;
            words[..at]
                .iter()
                .all(|w| w.starts_with("pub") || w.starts_with("#["))
                .then(|| declared.to_owned())
        })
        .collect()
}

/// Code lines, without comments and without the bodies of inline `mod name {` blocks.
fn outside_inline_modules(lines: &[String]) -> Vec<String> {
    let mut kept = Vec::new();
    let mut depth_in_module: Option<i64> = None;
    for line in lines {
        let code = line.split("//").next().unwrap_or("").to_owned();
        let words: Vec<&str> = code.split_whitespace().collect();
        let opens_module = words.contains(&"mod") && code.trim_end().ends_with('{');
        if depth_in_module.is_none() && opens_module {
            depth_in_module = Some(0);
        }
        match depth_in_module.as_mut() {
            Some(depth) => {
                *depth += code.matches('{').count() as i64 - code.matches('}').count() as i64;
                if *depth <= 0 {
                    depth_in_module = None;
                }
            }
            None => kept.push(code),
        }
    }
    kept
}

/// The first path segment after each `prefix` in `line`, every top-level one when a
/// brace group follows (`super::{a, b::c}` gives `a` and `b`).
fn names_after(line: &str, prefix: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (at, _) in line.match_indices(prefix) {
        let preceded_by_path = line[..at].ends_with("::");
        if preceded_by_path && prefix == "super::" {
            continue;
        }
        let rest = &line[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let (mut depth, mut current) = (0, String::new());
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => names.push(std::mem::take(&mut current)),
                    _ => current.push(c),
                }
            }
            names.push(current);
        } else {
            names.push(rest.to_owned());
        }
    }
    names
        .iter()
        .map(|n| {
            n.trim()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '*')
                .collect::<String>()
        })
        .filter(|n| !n.is_empty())
        .collect()
}

/// The declared `rust-version` is the one the container image builds with (clippy's
/// `incompatible_msrv`, denied in CI, checks the code against it; cargo refuses an
/// older toolchain).
#[test]
fn the_container_builds_with_the_declared_rust_version() {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let declared = manifest
        .lines()
        .find_map(|line| line.strip_prefix("rust-version = "))
        .map(|version| version.trim_matches('"').to_owned())
        .expect("Cargo.toml declares rust-version");
    let containerfile =
        std::fs::read_to_string(root().join("deploy/container/Containerfile")).unwrap();
    let image = containerfile
        .lines()
        .find_map(|line| line.strip_prefix("FROM docker.io/library/rust:"))
        .expect("the build stage is a rust image");
    assert!(
        image.starts_with(&format!("{declared}-")),
        "the Containerfile builds with rust:{image}, Cargo.toml declares {declared}"
    );
}
