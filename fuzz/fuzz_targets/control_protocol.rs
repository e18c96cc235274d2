//! The control socket's decoding on arbitrary bytes (what the agent reads from a client, and
//! what the client reads back): a typed error or a message, never a panic; and whatever decodes
//! encodes to one line that decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sshlb::control::{decode_reply, decode_request, encode};

fuzz_target!(|data: &[u8]| {
    match decode_request(data) {
        Ok(request) => {
            let line = encode(&request).expect("a decoded request encodes");
            assert_eq!(line.matches('\n').count(), 1, "not one line: {line:?}");
            let again = decode_request(line.as_bytes()).expect("an encoded request decodes");
            assert_eq!(again, request, "request round trip through {line:?}");
        }
        Err(err) => assert!(!err.to_string().is_empty()),
    }
    match decode_reply(data) {
        Ok(reply) => {
            let line = encode(&reply).expect("a decoded reply encodes");
            assert_eq!(line.matches('\n').count(), 1, "not one line: {line:?}");
            let again = decode_reply(line.as_bytes()).expect("an encoded reply decodes");
            assert_eq!(again, reply, "reply round trip through {line:?}");
        }
        Err(err) => assert!(!err.to_string().is_empty()),
    }
});
