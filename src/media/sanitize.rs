//! What an upload must pass before it is stored, and what is taken out of it.
//!
//! 1. The format comes from the bytes' signature; a `Content-Type` that says otherwise is refused.
//! 2. The dimensions come from the header, before any pixel is decoded: more than the pixel cap
//!    (a decompression bomb: a few KiB that decode to gigabytes) is refused there.
//! 3. The whole image is decoded, under allocation limits, so a truncated or damaged file is
//!    refused rather than stored.
//! 4. Location and other metadata go: an image the camera rotated by EXIF is turned upright and
//!    re-encoded (which drops all metadata); any other keeps its pixels untouched and loses its
//!    EXIF and XMP blocks (JPEG APP1 and APP13 segments and comments, PNG eXIf and text chunks,
//!    WebP EXIF and XMP chunks). Colour profiles stay.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageReader, metadata::Orientation};

use crate::domain::{DomainError, ImageFormat};

/// An image ready to store.
#[derive(Debug)]
pub struct Sanitized {
    pub bytes: Vec<u8>,
    pub format: ImageFormat,
    /// Upright.
    pub width: u32,
    pub height: u32,
}

/// Checks and cleans an upload (see the module's notes). `declared`: the request's
/// `Content-Type`, if it named an image type.
pub fn sanitize(data: Vec<u8>, declared: Option<ImageFormat>, max_pixels: u64) -> Result<Sanitized, DomainError> {
    let format = ImageFormat::sniff(&data)
        .ok_or_else(|| DomainError::invalid("the body is not a JPEG, PNG, WebP or GIF image"))?;
    if let Some(declared) = declared
        && declared != format
    {
        return Err(DomainError::invalid(format!(
            "Content-Type says {} but the bytes are {}",
            declared.content_type(),
            format.content_type()
        )));
    }
    let (width, height) = reader(&data, format, max_pixels)
        .into_dimensions()
        .map_err(|e| DomainError::invalid(format!("unreadable image header: {e}")))?;
    check_pixels(width, height, max_pixels)?;
    let mut decoder = reader(&data, format, max_pixels).into_decoder().map_err(damaged)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(damaged)?;
    if format == ImageFormat::Jpeg && !ends_with_eoi(&data) {
        // The JPEG decoder fills what is missing with grey rather than fail.
        return Err(DomainError::invalid("the image is truncated (no JPEG end marker)"));
    }
    if orientation != Orientation::NoTransforms && format != ImageFormat::Gif {
        image.apply_orientation(orientation);
        let bytes = encode_upright(&image, format)?;
        return Ok(Sanitized { bytes, format, width: image.width(), height: image.height() });
    }
    let bytes = match format {
        ImageFormat::Jpeg => strip_jpeg(&data).ok_or_else(|| damaged("bad JPEG segments"))?,
        ImageFormat::Png => strip_png(&data).ok_or_else(|| damaged("bad PNG chunks"))?,
        ImageFormat::Webp => strip_webp(&data).ok_or_else(|| damaged("bad WebP chunks"))?,
        ImageFormat::Gif => data,
    };
    Ok(Sanitized { bytes, format, width, height })
}

fn reader(data: &[u8], format: ImageFormat, max_pixels: u64) -> ImageReader<Cursor<&[u8]>> {
    let mut reader = ImageReader::with_format(Cursor::new(data), image_format(format));
    let mut limits = image::Limits::default();
    // Four bytes per pixel and some room for the decoder's own buffers.
    limits.max_alloc = Some(max_pixels.saturating_mul(4).saturating_add(64 << 20));
    reader.limits(limits);
    reader
}

pub(crate) fn image_format(format: ImageFormat) -> image::ImageFormat {
    match format {
        ImageFormat::Jpeg => image::ImageFormat::Jpeg,
        ImageFormat::Png => image::ImageFormat::Png,
        ImageFormat::Webp => image::ImageFormat::WebP,
        ImageFormat::Gif => image::ImageFormat::Gif,
    }
}

pub(crate) fn check_pixels(width: u32, height: u32, max_pixels: u64) -> Result<(), DomainError> {
    let pixels = width as u64 * height as u64;
    if width == 0 || height == 0 {
        return Err(DomainError::invalid("the image has no pixels"));
    }
    if pixels > max_pixels {
        return Err(DomainError::new(
            crate::domain::Code::PayloadTooLarge,
            format!("the image has {width}x{height} pixels; at most {max_pixels} are taken (media.max_pixels)"),
        ));
    }
    Ok(())
}

fn damaged(e: impl std::fmt::Display) -> DomainError {
    DomainError::invalid(format!("the image is damaged or truncated: {e}"))
}

/// A JPEG ends with EOI (`FF D9`); some cameras append a little after it.
fn ends_with_eoi(data: &[u8]) -> bool {
    let tail = &data[data.len().saturating_sub(4096)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

/// The upright image, re-encoded in its own format (which carries no metadata over).
fn encode_upright(image: &DynamicImage, format: ImageFormat) -> Result<Vec<u8>, DomainError> {
    let mut out = Vec::new();
    let result = match format {
        ImageFormat::Jpeg => {
            let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 92);
            image.to_rgb8().write_with_encoder(encoder)
        }
        ImageFormat::Png => image.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png),
        ImageFormat::Webp => image.to_rgba8().write_to(&mut Cursor::new(&mut out), image::ImageFormat::WebP),
        ImageFormat::Gif => image.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Gif),
    };
    result.map_err(|e| {
        tracing::error!(error = %e, ?format, "re-encoding an upright image failed");
        DomainError::internal()
    })?;
    Ok(out)
}

/// The JPEG without APP1 (EXIF, XMP), APP13 (Photoshop, IPTC) and comment segments; everything
/// from the first scan on is copied as it is. `None` if the segments do not parse.
fn strip_jpeg(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len());
    out.extend_from_slice(&data[..2]);
    let mut at = 2;
    loop {
        let marker = *data.get(at + 1)?;
        if *data.get(at)? != 0xFF {
            return None;
        }
        if marker == 0xFF {
            // Fill byte.
            at += 1;
            continue;
        }
        if marker == 0xDA || marker == 0xD9 {
            out.extend_from_slice(&data[at..]);
            return Some(out);
        }
        let length = u16::from_be_bytes([*data.get(at + 2)?, *data.get(at + 3)?]) as usize;
        let end = at.checked_add(2 + length)?;
        let segment = data.get(at..end)?;
        if !matches!(marker, 0xE1 | 0xED | 0xFE) {
            out.extend_from_slice(segment);
        }
        at = end;
    }
}

/// The PNG without eXIf and text chunks (tEXt, zTXt, iTXt: XMP lives there).
fn strip_png(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len());
    out.extend_from_slice(&data[..8]);
    let mut at = 8;
    while at < data.len() {
        let length = u32::from_be_bytes(data.get(at..at + 4)?.try_into().ok()?) as usize;
        let kind = data.get(at + 4..at + 8)?;
        let end = at.checked_add(12 + length)?;
        let chunk = data.get(at..end)?;
        if !matches!(kind, b"eXIf" | b"tEXt" | b"zTXt" | b"iTXt") {
            out.extend_from_slice(chunk);
        }
        at = end;
        if kind == b"IEND" {
            break;
        }
    }
    Some(out)
}

/// The WebP without its EXIF and XMP chunks, and with the extended header's flags for them
/// cleared.
fn strip_webp(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len());
    out.extend_from_slice(data.get(..12)?);
    let declared = u32::from_le_bytes(data.get(4..8)?.try_into().ok()?) as usize;
    let end_of_riff = data.len().min(declared.checked_add(8)?);
    let mut at = 12;
    while at + 8 <= end_of_riff {
        let kind = &data[at..at + 4];
        let size = u32::from_le_bytes(data[at + 4..at + 8].try_into().ok()?) as usize;
        let end = at.checked_add(8 + size + (size & 1))?.min(end_of_riff);
        let chunk = data.get(at..end)?;
        match kind {
            b"EXIF" | b"XMP " => {}
            b"VP8X" => {
                let start = out.len();
                out.extend_from_slice(chunk);
                // Flags byte: bit 3 EXIF, bit 2 XMP.
                if let Some(flags) = out.get_mut(start + 8) {
                    *flags &= !0b0000_1100;
                }
            }
            _ => out.extend_from_slice(chunk),
        }
        at = end;
    }
    let riff_size = u32::try_from(out.len() - 8).ok()?;
    out[4..8].copy_from_slice(&riff_size.to_le_bytes());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let image = DynamicImage::new_rgb8(width, height);
        let mut out = Vec::new();
        image.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png).unwrap();
        out
    }

    #[test]
    fn png_text_chunks_go_and_pixels_stay() {
        let clean = png(4, 3);
        // A tEXt chunk after IHDR (8 + 25 bytes): `Comment\0at 48.85,2.35`.
        let text = b"Comment\0at 48.85,2.35";
        let mut chunk = (text.len() as u32).to_be_bytes().to_vec();
        chunk.extend_from_slice(b"tEXt");
        chunk.extend_from_slice(text);
        chunk.extend_from_slice(&0u32.to_be_bytes());
        let mut tagged = clean[..33].to_vec();
        tagged.extend_from_slice(&chunk);
        tagged.extend_from_slice(&clean[33..]);
        assert_eq!(strip_png(&tagged).unwrap(), clean);
    }

    #[test]
    fn a_bomb_is_refused_from_its_header() {
        let error = sanitize(png(3000, 3000), None, 1_000_000).unwrap_err();
        assert_eq!(error.code, crate::domain::Code::PayloadTooLarge);
    }
}
