//! Any bytes, as a binary (protobuf) or text (JSON) frame: decoding never panics, and every
//! rejection is one of the decoder's typed errors.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings::domain::Code;
use tidings::transport::decode::{decode_frame, to_request};
use tidings_proto::Encoding;

fuzz_target!(|data: &[u8]| {
    for encoding in [Encoding::Protobuf, Encoding::Json] {
        if let Err((_, e)) = decode_frame(encoding, data).and_then(|frame| to_request(frame, 200)) {
            assert!(matches!(e.code, Code::BadFrame | Code::UnknownRequest | Code::InvalidArgument));
        }
    }
});
