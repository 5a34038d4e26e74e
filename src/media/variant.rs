//! Variants: an image resized (and re-encoded) on request, `?w=&h=&fit=&format=&q=`.
//!
//! Requests are snapped to a bounded set (sizes from `media.sizes`, quality to a multiple of 10),
//! so that the variants of one image are few and the cache cannot be flooded. An image is never
//! made larger than it is. A JPEG is decoded at 1/2, 1/4 or 1/8 of its size when that still
//! covers the variant (its IDCT scaling: most of the decoding work is skipped), then resized with
//! SIMD (Lanczos3) to the exact size.

use std::io::Cursor;

use fast_image_resize::images::Image;
use fast_image_resize::{PixelType, ResizeOptions, Resizer};

use crate::domain::{DomainError, DomainResult, ImageFormat, MediaId, MediaInfo};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Within the box, whole (the default).
    Contain,
    /// Filling the box, the middle kept.
    Cover,
}

/// A variant asked for, snapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariantSpec {
    /// The box (0: no bound that way).
    pub width: u32,
    pub height: u32,
    pub fit: Fit,
    pub format: ImageFormat,
    pub quality: u8,
}

impl VariantSpec {
    /// The variant a query asks for; `None` when it asks for none (no `w` or `h`).
    pub fn from_query(query: &[(String, String)], original: ImageFormat, sizes: &[u32]) -> DomainResult<Option<Self>> {
        let get = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let dimension = |name: &str| -> DomainResult<u32> {
            match get(name) {
                None => Ok(0),
                Some(v) => match v.parse::<u32>() {
                    Ok(n) if n > 0 => Ok(snap(n, sizes)),
                    _ => Err(DomainError::invalid(format!("{name}: a positive number of pixels"))),
                },
            }
        };
        let (width, height) = (dimension("w")?, dimension("h")?);
        if width == 0 && height == 0 {
            return match ["fit", "format", "q"].iter().find(|name| get(name).is_some()) {
                Some(name) => Err(DomainError::invalid(format!("{name} needs w or h"))),
                None => Ok(None),
            };
        }
        let fit = match get("fit") {
            None | Some("contain") => Fit::Contain,
            Some("cover") => Fit::Cover,
            Some(other) => return Err(DomainError::invalid(format!("fit: cover or contain, not {other:?}"))),
        };
        if fit == Fit::Cover && (width == 0 || height == 0) {
            return Err(DomainError::invalid("fit=cover needs both w and h"));
        }
        let format = match get("format") {
            None => match original {
                ImageFormat::Gif => ImageFormat::Png,
                other => other,
            },
            Some("jpeg" | "jpg") => ImageFormat::Jpeg,
            Some("png") => ImageFormat::Png,
            Some("webp") => ImageFormat::Webp,
            Some(other) => return Err(DomainError::invalid(format!("format: jpeg, png or webp, not {other:?}"))),
        };
        let quality = match get("q") {
            None => 80,
            Some(v) => match v.parse::<u32>() {
                Ok(q @ 1..=100) => (q.div_ceil(10) * 10) as u8,
                _ => return Err(DomainError::invalid("q: 1 to 100")),
            },
        };
        Ok(Some(Self { width, height, fit, format, quality }))
    }

    /// Its name in the cache, and its ETag: one per image and spec.
    pub fn key(&self, id: MediaId) -> String {
        let fit = match self.fit {
            Fit::Contain => "contain",
            Fit::Cover => "cover",
        };
        format!("{id}-{}x{}-{fit}-q{}.{}", self.width, self.height, self.quality, self.format.name())
    }

    /// The variant's size for an original of `width` x `height`, and the source size to scale to
    /// before cropping (the same unless cover crops).
    pub fn output_size(&self, width: u32, height: u32) -> ((u32, u32), (u32, u32)) {
        let (w, h) = (width as f64, height as f64);
        let bound = |b: u32| if b == 0 { f64::INFINITY } else { b as f64 };
        match self.fit {
            Fit::Contain => {
                let scale = (bound(self.width) / w).min(bound(self.height) / h).min(1.0);
                let size = (round(w * scale), round(h * scale));
                (size, size)
            }
            Fit::Cover => {
                let scale = (self.width as f64 / w).max(self.height as f64 / h);
                // Never larger than the original: a smaller box of the same shape instead.
                let shrink = scale.max(1.0);
                let out = (round(self.width as f64 / shrink), round(self.height as f64 / shrink));
                (out, (round(w * scale / shrink), round(h * scale / shrink)))
            }
        }
    }
}

fn round(v: f64) -> u32 {
    (v.round() as u32).max(1)
}

/// `n` snapped up to the next of `sizes`, or down to the largest.
fn snap(n: u32, sizes: &[u32]) -> u32 {
    sizes.iter().copied().filter(|&s| s >= n).min().or_else(|| sizes.iter().copied().max()).unwrap_or(n)
}

/// Makes the variant of an original (its stored bytes and what is known of it).
pub fn make(original: &[u8], info: &MediaInfo, spec: &VariantSpec) -> DomainResult<Vec<u8>> {
    let ((out_w, out_h), (scaled_w, scaled_h)) = spec.output_size(info.width, info.height);
    let source = decode(original, info.format, scaled_w, scaled_h)?;
    let mut target = Image::new(out_w, out_h, source.pixel_type());
    let mut options = ResizeOptions::new();
    if spec.fit == Fit::Cover {
        options = options.fit_into_destination(Some((0.5, 0.5)));
    }
    Resizer::new().resize(&source, &mut target, &options).map_err(|e| {
        tracing::error!(error = %e, "resizing failed");
        DomainError::internal()
    })?;
    encode(target, spec)
}

/// The original's pixels (RGB, or RGBA when it may have transparency), at no less than
/// `want_w` x `want_h` where a JPEG can be decoded smaller.
fn decode(data: &[u8], format: ImageFormat, want_w: u32, want_h: u32) -> DomainResult<Image<'static>> {
    let failed = |e: &dyn std::fmt::Display| {
        tracing::warn!(error = %e, ?format, "decoding a stored image failed");
        DomainError::internal()
    };
    if format == ImageFormat::Jpeg {
        let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(data));
        let clamp = |v: u32| v.min(u16::MAX as u32) as u16;
        decoder.scale(clamp(want_w), clamp(want_h)).map_err(|e| failed(&e))?;
        let pixels = decoder.decode().map_err(|e| failed(&e))?;
        let info = decoder.info().ok_or_else(|| failed(&"no frame"))?;
        let rgb = match info.pixel_format {
            jpeg_decoder::PixelFormat::RGB24 => pixels,
            jpeg_decoder::PixelFormat::L8 => pixels.iter().flat_map(|&l| [l, l, l]).collect(),
            jpeg_decoder::PixelFormat::L16 => pixels.chunks_exact(2).flat_map(|l| [l[0], l[0], l[0]]).collect(),
            jpeg_decoder::PixelFormat::CMYK32 => pixels
                .chunks_exact(4)
                .flat_map(|p| {
                    // Adobe's inverted CMYK, as jpeg-decoder returns it.
                    let k = p[3] as u32;
                    [p[0], p[1], p[2]].map(|c| (c as u32 * k / 255) as u8)
                })
                .collect(),
        };
        return Image::from_vec_u8(info.width as u32, info.height as u32, rgb, PixelType::U8x3).map_err(|e| failed(&e));
    }
    let image =
        image::load_from_memory_with_format(data, super::sanitize::image_format(format)).map_err(|e| failed(&e))?;
    let (w, h) = (image.width(), image.height());
    if image.color().has_alpha() {
        Image::from_vec_u8(w, h, image.into_rgba8().into_raw(), PixelType::U8x4).map_err(|e| failed(&e))
    } else {
        Image::from_vec_u8(w, h, image.into_rgb8().into_raw(), PixelType::U8x3).map_err(|e| failed(&e))
    }
}

fn encode(image: Image<'_>, spec: &VariantSpec) -> DomainResult<Vec<u8>> {
    let (w, h) = (image.width(), image.height());
    let alpha = image.pixel_type() == PixelType::U8x4;
    let pixels = image.into_vec();
    let failed = |e: &dyn std::fmt::Display| {
        tracing::error!(error = %e, format = ?spec.format, "encoding a variant failed");
        DomainError::internal()
    };
    let mut out = Vec::new();
    match spec.format {
        ImageFormat::Jpeg => {
            let rgb = if alpha { over_white(&pixels) } else { pixels };
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, spec.quality)
                .encode(&rgb, w, h, image::ExtendedColorType::Rgb8)
                .map_err(|e| failed(&e))?;
        }
        ImageFormat::Png => {
            let color = if alpha { image::ExtendedColorType::Rgba8 } else { image::ExtendedColorType::Rgb8 };
            image::ImageEncoder::write_image(image::codecs::png::PngEncoder::new(&mut out), &pixels, w, h, color)
                .map_err(|e| failed(&e))?;
        }
        ImageFormat::Webp => {
            let encoder = match alpha {
                true => webp::Encoder::from_rgba(&pixels, w, h),
                false => webp::Encoder::from_rgb(&pixels, w, h),
            };
            out.extend_from_slice(&encoder.encode(spec.quality as f32));
        }
        ImageFormat::Gif => return Err(DomainError::invalid("variants are JPEG, PNG or WebP")),
    }
    Ok(out)
}

/// RGBA composed over white, as RGB (JPEG has no transparency).
fn over_white(rgba: &[u8]) -> Vec<u8> {
    rgba.chunks_exact(4)
        .flat_map(|p| {
            let a = p[3] as u32;
            [p[0], p[1], p[2]].map(|c| ((c as u32 * a + 255 * (255 - a)) / 255) as u8)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZES: &[u32] = &[64, 128, 256, 320, 640];

    fn query(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn spec(pairs: &[(&str, &str)]) -> VariantSpec {
        VariantSpec::from_query(&query(pairs), ImageFormat::Jpeg, SIZES).unwrap().unwrap()
    }

    #[test]
    fn requests_are_snapped() {
        assert_eq!(VariantSpec::from_query(&query(&[]), ImageFormat::Jpeg, SIZES).unwrap(), None);
        let s = spec(&[("w", "300"), ("h", "5000"), ("q", "73")]);
        assert_eq!((s.width, s.height, s.quality, s.fit, s.format), (320, 640, 80, Fit::Contain, ImageFormat::Jpeg));
        assert_eq!(spec(&[("w", "1"), ("format", "webp")]).format, ImageFormat::Webp);
        for bad in [
            &[("w", "0")][..],
            &[("w", "x")],
            &[("w", "9"), ("fit", "fill")],
            &[("fit", "cover")],
            &[("w", "9"), ("fit", "cover")],
            &[("w", "9"), ("format", "bmp")],
            &[("w", "9"), ("q", "0")],
        ] {
            assert!(VariantSpec::from_query(&query(bad), ImageFormat::Jpeg, SIZES).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes_keep_the_aspect_and_never_grow() {
        let contain = spec(&[("w", "320"), ("h", "320")]);
        assert_eq!(contain.output_size(2000, 1000).0, (320, 160));
        assert_eq!(contain.output_size(100, 50).0, (100, 50), "never larger");
        let cover = spec(&[("w", "320"), ("h", "320"), ("fit", "cover")]);
        assert_eq!(cover.output_size(2000, 1000), ((320, 320), (640, 320)));
        // Smaller than the box: the same square shape, as large as the original allows.
        assert_eq!(cover.output_size(200, 100).0, (100, 100));
        let wide = spec(&[("w", "128")]);
        assert_eq!(wide.output_size(1000, 3000).0, (128, 384));
    }
}

/// What a 320 px variant costs, step by step, for a 1 MP and a 4 MP photo (release build):
/// `cargo test --release --lib variant_cost -- --ignored --nocapture`.
#[cfg(test)]
mod cost {
    use super::*;
    use std::time::Instant;

    /// A photo-like JPEG: smooth waves and a fine grain, quality 90.
    fn photo(width: u32, height: u32) -> Vec<u8> {
        let mut state = 12345u32;
        let image = image::RgbImage::from_fn(width, height, |x, y| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let grain = (state % 17) as i32 - 8;
            let v = ((x as f32 / 40.0).sin() * 60.0 + (y as f32 / 55.0).cos() * 50.0 + 128.0) as i32 + grain;
            let c = v.clamp(0, 255) as u8;
            image::Rgb([c, c / 2 + 40, 255 - c])
        });
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .encode(image.as_raw(), width, height, image::ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    #[test]
    #[ignore]
    fn variant_cost() {
        for (w, h) in [(1154, 866), (2309, 1732)] {
            let data = photo(w, h);
            let info = MediaInfo {
                id: MediaId::of(&data),
                format: ImageFormat::Jpeg,
                width: w,
                height: h,
                bytes: data.len() as u64,
            };
            let spec =
                VariantSpec { width: 320, height: 320, fit: Fit::Contain, format: ImageFormat::Jpeg, quality: 80 };
            let runs = 20;
            let time = |f: &mut dyn FnMut()| {
                let start = Instant::now();
                for _ in 0..runs {
                    f();
                }
                start.elapsed().as_secs_f64() * 1000.0 / runs as f64
            };
            let scaled = time(&mut || {
                decode(&data, ImageFormat::Jpeg, 320, 240).unwrap();
            });
            let full = time(&mut || {
                image::load_from_memory_with_format(&data, image::ImageFormat::Jpeg).unwrap();
            });
            let whole = time(&mut || {
                make(&data, &info, &spec).unwrap();
            });
            println!(
                "{w}x{h} ({} KB): scaled decode {scaled:.1} ms (whole-image decode {full:.1} ms), variant {whole:.1} ms",
                data.len() / 1000
            );
        }
    }
}
