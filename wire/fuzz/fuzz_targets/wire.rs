//! Fuzz target: every input is fed to `decode_press`, `decode_status` and `topic::parse`, and
//! the properties in `props.rs` must hold (not merely "does not panic").
#![no_main]

#[path = "../props.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    props::check(data);
});
