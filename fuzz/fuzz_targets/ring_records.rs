#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = pausewatch::fuzzing::ring_records(data);
});
