//! The fuzz target's properties (wire/fuzz/props.rs) over its seed corpus and every input the
//! fuzzer ever broke (wire/fuzz/regressions/), as a plain test: CI checks them without
//! cargo-fuzz or a nightly compiler.

#[path = "../fuzz/props.rs"]
mod props;

use std::path::Path;

fn inputs(dir: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| {
            let path = e.expect("directory entry").path();
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            (path.file_name().expect("a file name").to_string_lossy().into_owned(), bytes)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn the_seed_corpus_keeps_every_property() {
    let seeds = inputs("fuzz/seeds/wire");
    assert!(seeds.len() >= 40, "seed corpus present: {} files", seeds.len());
    for (name, bytes) in seeds {
        let r = std::panic::catch_unwind(|| props::check(&bytes));
        assert!(r.is_ok(), "seed {name} breaks a property");
    }
}

#[test]
fn every_input_the_fuzzer_broke_keeps_every_property() {
    for (name, bytes) in inputs("fuzz/regressions") {
        if name.starts_with('.') || name.ends_with(".md") {
            continue;
        }
        let r = std::panic::catch_unwind(|| props::check(&bytes));
        assert!(r.is_ok(), "regression input {name} breaks a property again");
    }
}
