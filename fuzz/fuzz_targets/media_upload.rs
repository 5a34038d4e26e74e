//! Any bytes, as an upload declared as each image type (or as none): checking and cleaning never
//! panics and never allocates past the pixel cap; every refusal is a typed error, and what passes
//! decodes again as the format it claims, with the dimensions it reports.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings::domain::{Code, ImageFormat};
use tidings::media::sanitize;

/// Small enough that the fuzzer's images stay cheap; the check is the same at any size.
const MAX_PIXELS: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let declared = [None, Some(ImageFormat::Jpeg), Some(ImageFormat::Png), Some(ImageFormat::Webp), Some(ImageFormat::Gif)];
    for declared in declared {
        match sanitize(data.to_vec(), declared, MAX_PIXELS) {
            Ok(clean) => {
                assert_eq!(ImageFormat::sniff(&clean.bytes), Some(clean.format));
                let again = image::load_from_memory(&clean.bytes).expect("a cleaned image decodes");
                assert_eq!((again.width(), again.height()), (clean.width, clean.height));
            }
            Err(e) => assert!(matches!(e.code, Code::InvalidArgument | Code::PayloadTooLarge), "{e}"),
        }
    }
});
