//! The PROXY protocol header parser, fed what a connection may open with
//! in any amount. It must never panic, a complete header must lie within
//! the bytes given, and "incomplete" must ask for more than it was given.

#![no_main]

use libfuzzer_sys::fuzz_target;
use obleth::edge::proxy_protocol::header::{parse, Parsed};

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(Parsed::Complete { length, .. }) => assert!(length <= data.len()),
        Ok(Parsed::Incomplete { at_least }) => assert!(at_least > data.len()),
        Err(_) => {}
    }
});
