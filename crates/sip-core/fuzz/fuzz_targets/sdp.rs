//! SDP bodies on their own.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sip_core_fuzz::sdp(data);
});
