#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hallmark::fuzzing::ocsp_request(data);
});
