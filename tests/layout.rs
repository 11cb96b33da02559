//! The library's one-way data flow (src/lib.rs): a module imports only from
//! its own stage, from earlier stages, and from the folders beside the
//! stages, which themselves import no stage.
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// The stages in data-flow order; a stage may import those before it.
const STAGES: [&str; 8] =
    ["data", "model", "objective", "method", "optim", "train", "transfer", "tools"];
/// Beside the stages: any module may import them, and they import no stage.
const BESIDE: [&str; 4] = ["error", "files", "distributed", "plots"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a source text names as `crate::NAME`, comments
/// left out (a doc link is not an import).
fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let name: String =
                rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

/// The folder (or top-level file) of the library a source file belongs to.
fn unit_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
    first.trim_end_matches(".rs").to_string()
}

/// Every `crate::X` import of the library that breaks the rule, as
/// "file imports X" lines.
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut bad = Vec::new();
    for file in files {
        let unit = unit_of(src, &file);
        if ["lib", "main", "cli"].contains(&unit.as_str()) {
            continue;
        }
        let allowed: Vec<&str> = match STAGES.iter().position(|s| *s == unit) {
            Some(rank) => STAGES[..=rank].iter().chain(&BESIDE).copied().collect(),
            None if BESIDE.contains(&unit.as_str()) => vec![unit.as_str(), "error", "files"],
            None => panic!("{}: {unit} is neither a stage nor beside them", file.display()),
        };
        for name in crate_paths(&fs::read_to_string(&file).unwrap()) {
            let is_module = name.chars().next().is_some_and(|c| c.is_ascii_lowercase());
            if is_module && !allowed.contains(&name.as_str()) {
                bad.push(format!("{} imports crate::{name}", file.display()));
            }
        }
    }
    bad
}

#[test]
fn no_module_imports_from_a_later_stage() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = violations(&src);
    assert!(bad.is_empty(), "imports against the data flow:\n{}", bad.join("\n"));
}

#[test]
fn a_backward_import_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let write = |rel: &str, text: &str| {
        let path = dir.path().join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    };
    write("lib.rs", "pub mod data; pub mod train;");
    write("data/views.rs", "use crate::data::dataset::Dataset;\n// see crate::train::run\n");
    write("train/run.rs", "use crate::data::views::View;\nuse crate::distributed::x;\n");
    write("plots/mod.rs", "use crate::{Error, Result};\n");
    assert!(violations(dir.path()).is_empty(), "{:?}", violations(dir.path()));

    write("model/ppm.rs", "use crate::method::pair::PixPro;\n");
    write("plots/mod.rs", "use crate::transfer::voc::IGNORE;\n");
    let bad = violations(dir.path());
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(bad.iter().any(|b| b.ends_with("model/ppm.rs imports crate::method")), "{bad:?}");
    assert!(bad.iter().any(|b| b.ends_with("plots/mod.rs imports crate::transfer")), "{bad:?}");
}
