#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hallmark::fuzzing::rest_bodies(data);
});
