//! The record decoder on arbitrary bytes: never panics, never reads out of bounds, and every
//! record it returns re-encodes to exactly the bytes it came from (nothing invented).
#![no_main]

use libfuzzer_sys::fuzz_target;
use veriface::sinks::records::{decode, encode_frame, Decoded, MAX_FRAME};

fuzz_target!(|data: &[u8]| {
    for final_chunk in [true, false] {
        let mut d = Decoded::default();
        let used = decode(data, 0, final_chunk, &mut d);
        assert!(used <= data.len());
        for (offset, record) in &d.records {
            let mut frame = [0u8; MAX_FRAME + 1];
            let n = encode_frame(record, &mut frame).expect("a decoded record re-encodes");
            let at = *offset as usize;
            // The frame's bytes are in the input (its trailing delimiter may be the input's end).
            let body = &frame[..n - 1];
            assert_eq!(&data[at..at + body.len()], body);
        }
        for damage in &d.damaged {
            assert!(damage.start <= damage.end && damage.end as usize <= data.len());
        }
    }
});
