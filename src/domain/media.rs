//! Stored images: their ids and what is known of them.

use std::fmt;

use sha2::{Digest, Sha256};

/// A stored image's id: the first 16 bytes of the SHA-256 of its stored bytes, written as 32 hex
/// digits. Content-addressed: the same bytes have one id and are stored once, whoever uploads them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MediaId(pub [u8; 16]);

impl MediaId {
    pub fn of(bytes: &[u8]) -> Self {
        let digest = Sha256::digest(bytes);
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        Self(id)
    }

    /// From its 32 hex digits (lower or upper case); `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != 32 || !text.is_ascii() {
            return None;
        }
        let mut id = [0u8; 16];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self(id))
    }
}

impl fmt::Display for MediaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl serde::Serialize for MediaId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MediaId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        MediaId::parse(&text).ok_or_else(|| serde::de::Error::custom("a media id is 32 hex digits"))
    }
}

impl fmt::Debug for MediaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MediaId({self})")
    }
}

/// The image formats tidings stores and serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    Jpeg,
    Png,
    Webp,
    Gif,
}

impl ImageFormat {
    pub const ALL: [ImageFormat; 4] = [ImageFormat::Jpeg, ImageFormat::Png, ImageFormat::Webp, ImageFormat::Gif];

    pub fn content_type(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Png => "image/png",
            ImageFormat::Webp => "image/webp",
            ImageFormat::Gif => "image/gif",
        }
    }

    /// From a `Content-Type` (parameters ignored; `image/jpg` is taken for JPEG).
    pub fn from_content_type(value: &str) -> Option<Self> {
        let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match essence.as_str() {
            "image/jpeg" | "image/jpg" | "image/pjpeg" => Some(ImageFormat::Jpeg),
            "image/png" => Some(ImageFormat::Png),
            "image/webp" => Some(ImageFormat::Webp),
            "image/gif" => Some(ImageFormat::Gif),
            _ => None,
        }
    }

    /// What the bytes are, from their signature (never from what the client says).
    pub fn sniff(bytes: &[u8]) -> Option<Self> {
        if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(ImageFormat::Jpeg)
        } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(ImageFormat::Png)
        } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
            Some(ImageFormat::Webp)
        } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
            Some(ImageFormat::Gif)
        } else {
            None
        }
    }

    /// Its code in the store.
    pub fn code(self) -> i32 {
        match self {
            ImageFormat::Jpeg => 1,
            ImageFormat::Png => 2,
            ImageFormat::Webp => 3,
            ImageFormat::Gif => 4,
        }
    }

    pub fn from_code(code: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.code() == code)
    }

    /// `jpeg`, `png`, `webp`, `gif` (as in a variant's `format=`).
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "jpeg",
            ImageFormat::Png => "png",
            ImageFormat::Webp => "webp",
            ImageFormat::Gif => "gif",
        }
    }
}

/// What is known of a stored image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaInfo {
    pub id: MediaId,
    pub format: ImageFormat,
    /// As displayed: after the EXIF orientation was applied.
    pub width: u32,
    pub height: u32,
    /// Size of the stored bytes.
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_and_parse_back() {
        let id = MediaId::of(b"some bytes");
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(MediaId::parse(&text), Some(id));
        assert_eq!(MediaId::parse(&text.to_uppercase()), Some(id));
        assert_eq!(MediaId::parse("zz"), None);
        assert_eq!(MediaId::parse(&"g".repeat(32)), None);
        assert_eq!(MediaId::parse(&"é".repeat(16)), None);
    }

    #[test]
    fn formats_come_from_signatures() {
        assert_eq!(ImageFormat::sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Some(ImageFormat::Jpeg));
        assert_eq!(ImageFormat::sniff(b"\x89PNG\r\n\x1a\n...."), Some(ImageFormat::Png));
        assert_eq!(ImageFormat::sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some(ImageFormat::Webp));
        assert_eq!(ImageFormat::sniff(b"GIF89a.."), Some(ImageFormat::Gif));
        assert_eq!(ImageFormat::sniff(b"<svg"), None);
        assert_eq!(ImageFormat::from_content_type("image/JPG; q=1"), Some(ImageFormat::Jpeg));
        for f in ImageFormat::ALL {
            assert_eq!(ImageFormat::from_code(f.code()), Some(f));
            assert_eq!(ImageFormat::from_content_type(f.content_type()), Some(f));
        }
    }
}
