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
            let bytes =
                std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            (
                path.file_name()
                    .expect("a file name")
                    .to_string_lossy()
                    .into_owned(),
                bytes,
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn the_seed_corpus_keeps_every_property() {
    let seeds = inputs("fuzz/seeds/wire");
    assert!(
        seeds.len() >= 40,
        "seed corpus present: {} files",
        seeds.len()
    );
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

/// Found by the fuzz target: an integer beyond `i64` (kept as `u64` by serde_json) in `rssi`
/// was called `wrong_type`, "rssi must be an integer", though it is one; it is out of range.
/// The same held for `battery` of presses and statuses.
#[test]
fn an_integer_beyond_i64_is_out_of_range_not_of_the_wrong_type() {
    use yijian_wire::{decode_press, decode_status, RejectReason};
    let found = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/regressions/status-rssi-beyond-i64-called-wrong-type"),
    )
    .expect("the kept input");
    let r = decode_status(&found).expect_err("rssi out of range");
    assert_eq!(
        (r.reason, r.message.as_str()),
        (
            RejectReason::InvalidStatus,
            "rssi must be an integer from -200 to 0 (dBm)"
        )
    );

    let r = decode_status(br#"{"online":true,"battery":18446744073709551615}"#)
        .expect_err("battery out of range");
    assert_eq!(
        (r.reason, r.message.as_str()),
        (
            RejectReason::InvalidStatus,
            "battery must be an integer from 0 to 100"
        )
    );
    let r = decode_press(
        br#"{"id":"p1","button":"main","gesture":"single","at":1,"battery":9223372036854775808}"#,
    )
    .expect_err("battery out of range");
    assert_eq!(
        (r.reason, r.message.as_str()),
        (
            RejectReason::InvalidBattery,
            "battery must be an integer from 0 to 100"
        )
    );
    assert_eq!(r.press_id.as_deref(), Some("p1"));
    // A fraction is still of the wrong type.
    let r = decode_status(br#"{"online":true,"rssi":-60.5}"#).expect_err("rssi a fraction");
    assert_eq!(r.reason, RejectReason::WrongType);
}
